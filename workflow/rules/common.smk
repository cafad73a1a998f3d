from snakemake.utils import validate

from sequifier import config as stage_config
from sequifier.preprocess_plan import make_plan


validate(config, "../schemas/config.schema.yaml")

EXPERIMENT = config["experiment"]
RESULTS = f"results/{EXPERIMENT}"
LOGS = f"logs/{EXPERIMENT}"
CONDA_ENV = "../../envs/sequifier.yaml"

# Jobs run `python -m sequifier` from this checkout, in the active environment or in the
# conda environment of CONDA_ENV (`--sdm conda`), which holds the dependencies only.
shell.prefix(
    f"set -euo pipefail; export PYTHONPATH={workflow.basedir}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)


def preprocess_overrides():
    """Where the preprocess steps of this experiment read and write (under results/)."""
    return {
        "project_root": ".",
        "data_path": config["data"],
        "output_path": f"{RESULTS}/data",
        "metadata_config_path": f"{RESULTS}/metadata.json",
        "work_path": f"{RESULTS}/preprocess-work",
        "n_partitions": config["partitions"],
    }


PREPROCESS_PLAN = make_plan(
    stage_config.load("preprocess", config["preprocess"], preprocess_overrides()), config["preprocess"]
)
PARTS = range(PREPROCESS_PLAN.n_parts)
SPLITS = range(len(PREPROCESS_PLAN.config["split_ratios"]))
PREPROCESS_FLAGS = " ".join(
    f"--{key.replace('_', '-')} {value}" for key, value in preprocess_overrides().items()
)


def split_output():
    """The output of split {split}: a file, or a folder of shards."""
    path = str(PREPROCESS_PLAN.split_path("{split}"))
    return path if PREPROCESS_PLAN.merged else directory(path)


def preprocess_outputs():
    return [f"{RESULTS}/metadata.json", *(str(PREPROCESS_PLAN.split_path(k)) for k in SPLITS)]


def input_files():
    """The files of the input table (a folder is tracked by its files, not its own time stamp)."""
    return [str(path) for path in PREPROCESS_PLAN.files]


def id_map_files():
    """Precomputed id maps the metadata depends on."""
    return [str(path) for path in PREPROCESS_PLAN.id_map_paths()]


def part_path(kind):
    """A per-part file of the preprocess work folder, with the {part} wildcard."""
    return str(getattr(PREPROCESS_PLAN, kind)("{part}"))


def all_parts(kind):
    return [str(getattr(PREPROCESS_PLAN, kind)(p)) for p in PARTS]


def parts_folder():
    return str(PREPROCESS_PLAN.part_path(0).parent)


def scan_input(wildcards):
    """What a scan reads: the partitioned table, or the input itself (one part, or parts by file)."""
    if PREPROCESS_PLAN.partitioned:
        return [parts_folder()]
    return [str(path) for path in PREPROCESS_PLAN.input_of(int(wildcards.part))]
