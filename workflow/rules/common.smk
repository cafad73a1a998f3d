import json
import shlex
from pathlib import Path

import yaml
from snakemake.utils import validate

from sequifier import config as stage_config
from sequifier.errors import ConfigError
from sequifier.infer import sampling
from sequifier.search import leaderboard
from sequifier.search import space
from sequifier.preprocess.plan import make_plan
from sequifier.train import lifecycle
from sequifier.train.metrics import metrics_file


# Snakemake's YAML loader keeps the last of a key given twice: refuse it, as every stage does.
for path in workflow.configfiles:
    stage_config.read_yaml(path)
validate(config, "../schemas/config.schema.yaml")

EXPERIMENT = config["experiment"]
RESULTS = f"results/{EXPERIMENT}"
LOGS = f"logs/{EXPERIMENT}"
CONDA_ENV = "../../envs/sequifier.yaml"

# Jobs run `python -m sequifier` from this checkout, in the active environment or in the
# conda environment of CONDA_ENV (`--sdm conda`), which holds the dependencies only.
shell.prefix(
    f"set -euo pipefail; export PYTHONPATH={shlex.quote(workflow.basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
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
    f"--{key.replace('_', '-')} {shlex.quote(str(value))}" for key, value in preprocess_overrides().items()
)


def split_output():
    """The output of split {split}: a file, or a folder of shards."""
    path = str(PREPROCESS_PLAN.split_path("{split}"))
    return path if PREPROCESS_PLAN.merged else directory(path)


def split_files():
    """The windows of every split, as preprocess writes them (files, or folders of shards)."""
    return [str(PREPROCESS_PLAN.split_path(k)) for k in SPLITS]


def preprocess_outputs():
    return [f"{RESULTS}/metadata.json", *split_files()]


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


# -- training runs ------------------------------------------------------------------------------
# A run is a wildcard with a stable id and its own resolved train config,
# results/{experiment}/runs/{run}/train.yaml, the one file its train job reads. RUNS maps each id
# to its point of the search space (dotted train-config keys): one run, `default`, without a
# `search` block. The search block has the schema of `sequifier hyperparameter-search`.
def search_settings():
    if config.get("search") is None:
        return None
    block = {**config["search"], "train_config_path": config["train"]}
    return stage_config.resolve("hyperparameter-search", block, "config/config.yaml: search")


SEARCH = search_settings()
if SEARCH is None:
    RUNS = {"default": {}}
else:
    POINTS = space.expand(
        SEARCH["space"], SEARCH["strategy"], SEARCH["n_samples"], SEARCH["seed"], "config/config.yaml: search"
    )
    RUNS = space.run_ids(POINTS)
# The W&B group of the runs: the config's, else the search's name, else the experiment's.
WANDB_GROUP = config["wandb"]["group"] or (config.get("search") or {}).get("search_name") or EXPERIMENT


wildcard_constraints:
    run=r"[A-Za-z0-9_.-]+",


def run_folder(run):
    return f"{RESULTS}/runs/{run}"


def run_path(name):
    """A file or folder of a run, with the {run} wildcard."""
    return f"{run_folder('{run}')}/{name}"


def run_overrides(run, point=None):  # point: given by space.run_configs; RUNS[run] is used
    """Where the run reads and writes, and how W&B names (run id), groups and tags (its point) it."""
    folder = run_folder(run)
    return {
        "project_root": ".",
        "model_name": run,
        "metadata_config_path": f"{RESULTS}/metadata.json",
        "models_path": f"{folder}/models",
        "checkpoints_path": f"{folder}/checkpoints",
        "logs_path": f"{folder}/logs",
        "wandb.project": config["wandb"]["project"],
        "wandb.group": WANDB_GROUP,
        "wandb.name": run,
        "wandb.tags": space.tags(RUNS[run]),
    }


# Resolved (defaults filled) and validated now, so that a bad train config or search space stops
# the workflow before any job starts, with the file and the key named.
RUN_CONFIGS = space.run_configs(
    RUNS,
    stage_config.read_yaml(config["train"]),
    "config/config.yaml: search" if SEARCH else config["train"],
    run_overrides,
)
# A run's init_from model is there before any job starts (Snakemake would keep the models of a run
# trained before, rather than say that it is missing), and not in a run's folder (Snakemake empties
# it before it trains that run again).
space.check_init_from(RUNS, RUN_CONFIGS, "config/config.yaml: search", config["train"], f"{RESULTS}/runs")


def resolved_run_config(wildcards):
    return RUN_CONFIGS[wildcards.run]


def in_schema_order(values, schema):
    """The config with its keys in the order of the schema (then any others), to read like it."""
    order = list(schema.get("properties", {}))
    keys = [key for key in order if key in values] + [key for key in values if key not in order]
    return {
        key: in_schema_order(values[key], schema["properties"][key])
        if isinstance(values[key], dict) and key in order
        else values[key]
        for key in keys
    }


def write_run_config(run, resolved, path, log):
    """The run's train config, complete (every default filled in), as its train job reads it."""
    with open(path, "w") as handle:
        handle.write(f"# Train config of run {run}: {config['train']} resolved with the run's overrides.\n")
        yaml.safe_dump(in_schema_order(resolved, stage_config.load_schema("train")), handle, sort_keys=False)
    with open(log, "w") as handle:
        handle.write(f"{path}: {config['train']} with {json.dumps({**RUNS[run], **run_overrides(run)})}\n")


def train_outputs():
    return expand(run_path("{kind}"), run=RUNS, kind=["models", "metrics.csv"])


def train_command(wildcards, input, resources):
    """The job's training: on the CPU, on one GPU, or torchrun with a process per GPU (gpu > 1),
    resuming from the run's checkpoints (sequifier.train.lifecycle keeps them only for its inputs).
    A job on several nodes (the `nodes` resource) runs one torchrun per node (sequifier.train.launch)."""
    nodes = resources.get("nodes", 1)
    return shlex.join(lifecycle.launch_command(input.config, resources.gpu, resume=True, nodes=nodes))


def init_from_input(wildcards):
    """The model the run starts from (init_from), an input of its train job: its stamp covers it, so
    a changed model trains the run again from scratch."""
    source = space.init_from_file(RUN_CONFIGS[wildcards.run])
    return [str(source)] if source is not None else []


def checkpoints_folder(wildcards):
    return RUN_CONFIGS[wildcards.run]["checkpoints_path"]


def package_metrics(wildcards):
    """The metrics CSV that `sequifier train` rewrites after every validation."""
    return str(metrics_file(RUN_CONFIGS[wildcards.run]["logs_path"], wildcards.run))


def write_leaderboard(output, log):
    """The leaderboard, the curves and runs.csv of the experiment's runs (sequifier.search.leaderboard)."""
    results, metrics = [], {}
    for run in RUNS:
        status = json.loads(Path(run_folder(run), "status.json").read_text())
        if status["status"] == "done":
            metrics[run] = Path(run_folder(run), "metrics.csv")
        results.append(leaderboard.outcome_row(run, status, metrics.get(run), Path(run_folder(run), "models")))
    table = space.points_table(RUNS)
    rows = leaderboard.ranked(results, table)
    leaderboard.write_leaderboard(Path(output.table), rows)
    leaderboard.plot_curves(Path(output.plot), metrics, f"{EXPERIMENT}: validation loss")
    leaderboard.write_table(Path(output.runs), table)
    with open(log, "w") as handle:
        handle.write(f"{len(rows)} runs, {len(metrics)} finished; best: {rows[0]['run'] if metrics else 'none'}\n")


# -- inference ----------------------------------------------------------------------------------
# config["infer"] names infer configs ({name: file}); each is applied to every run's best model.
INFER_FILES = config["infer"]


def infer_overrides():
    """The run's model (null: the best one its train config names) and the experiment's metadata."""
    return {"project_root": ".", "model_path": None, "metadata_config_path": f"{RESULTS}/metadata.json"}


# Validated now, as the train configs are: a bad infer config stops the workflow before any job,
# and so do sampling keys that would do nothing (or are no number), as `sequifier infer` says.
INFER_CONFIGS = {name: stage_config.load("infer", path, infer_overrides()) for name, path in INFER_FILES.items()}


def check_sampling_keys():
    for name, loaded in INFER_CONFIGS.items():

        def fail(message, path=INFER_FILES[name]):
            raise ConfigError(f"{path}: {message}")

        sampling.check_keys(loaded, fail)


check_sampling_keys()


def infer_flags(wildcards):
    settings = {key: "null" if value is None else value for key, value in infer_overrides().items()}
    return " ".join(f"--set {shlex.quote(f'{key}={value}')}" for key, value in settings.items())


def infer_runs():
    return ["best"] if config["infer_runs"] == "best" else list(RUNS)


def infer_inputs(wildcards):
    """A run's train config and models; for `best`, the leaderboard and those of every run."""
    runs = list(RUNS) if wildcards.run == "best" else [wildcards.run]
    found = {
        "train_configs": [f"{run_folder(run)}/train.yaml" for run in runs],
        "models": [f"{run_folder(run)}/models" for run in runs],
        "statuses": [f"{run_folder(run)}/status.json" for run in runs],
    }
    if wildcards.run == "best":
        found["leaderboard"] = f"{RESULTS}/leaderboard.csv"
    return found


def infer_select(wildcards):
    """A shell command that prints the run to apply, or nothing when there is no finished one: the
    leaderboard's first finished run for `best` (read when the job runs), else the run itself."""
    if wildcards.run != "best":
        status = shlex.quote(f"{run_folder(wildcards.run)}/status.json")
        return f"{{ grep -q '\"status\": \"done\"' {status} && echo {wildcards.run}; }} || true"
    return f"awk -F, 'NR == 2 && $3 == \"done\" {{print $2}}' {shlex.quote(RESULTS)}/leaderboard.csv"


def infer_outputs():
    return expand(f"{RESULTS}/infer/{{run}}/{{name}}", run=infer_runs(), name=INFER_FILES)
