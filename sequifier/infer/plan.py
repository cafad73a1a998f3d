"""The infer config made complete: which models, which data, where the outputs go.

`make_infer_plan` finds the models (the train config's best model when model_path is null).
`model_setup` checks one loaded model against the config and the data's metadata, and says
how the data is read; output names follow the model file's name
(sequifier-{model}-best-3.pt -> sequifier-{model}-best-predictions.csv).
"""

import copy
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from sequifier import config as stage_config
from sequifier.data.metadata import Metadata
from sequifier.data.window_files import WindowSource
from sequifier.errors import ConfigError
from sequifier.infer import sampling
from sequifier.infer.masked import check_masked
from sequifier.model.export import find_export

log = logging.getLogger(__name__)
EXPORT_NAME = re.compile(r"^(?P<base>.+?)(?P<embedding>-embedding)?-\d+$")


@dataclass(frozen=True)
class InferPlan:
    config: dict
    source: str
    root: Path
    models: list
    outputs: Path

    def fail(self, message: str):
        raise ConfigError(f"{self.source}: {message}")


@dataclass(frozen=True)
class ModelSetup:
    """How one model is applied: its data, the data's metadata, and the names of its outputs."""

    base: str
    data_path: Path
    data_metadata: Metadata
    model_metadata: Metadata  # the metadata the model was trained with
    windows: WindowSource
    targets: list
    probabilities: list  # categorical targets whose probabilities are written
    sampled: list

    def output(self, plan: InferPlan, folder: str, suffix: str) -> Path:
        return plan.outputs / folder / f"{self.base}-{suffix}"


def _default_model(config: dict, source: str, root: Path) -> Path:
    train = stage_config.load_linked("train", root, config, "train_config_path", source, "model_path")
    models, name = root / train["project_root"] / train["models_path"], train["model_name"]
    embedding = config["model_type"] == "embedding"
    found = find_export(models, name, "best", embedding, "pt")
    if found is None:
        label = "best-embedding" if embedding else "best"
        raise ConfigError(
            f"{source}: model_path is null and {models} holds no sequifier-{name}-{label}-EPOCH.pt (the "
            "train config's best model); train first, or set model_path"
        )
    return found


def make_infer_plan(loaded: dict, source: str = "infer config") -> InferPlan:
    config = copy.deepcopy(loaded)
    sampling.check_keys(config, lambda message: _refuse(source, message))
    root = Path(config["project_root"])
    paths = config["model_path"]
    if paths is None:
        models = [_default_model(config, source, root)]
    else:
        models = [root / path for path in ([paths] if isinstance(paths, str) else paths)]
    bases = [output_base(path) for path in models]
    for i, base in enumerate(bases):
        if base in bases[:i]:
            raise ConfigError(
                f"{source}: model_path: {models[bases.index(base)]} and {models[i]} give the same output "
                f"names ({base}-...); apply them in separate runs with different output_path"
            )
    if config["autoregression"] and config["model_type"] == "embedding":
        raise ConfigError(
            f"{source}: autoregression: true, but model_type is embedding; only a generative model generates"
        )
    if config["autoregression"] and config["autoregression_total_steps"] is None:
        raise ConfigError(
            f"{source}: autoregression_total_steps: null, but autoregression needs a number of steps"
        )
    return InferPlan(config, source, root, models, root / config["output_path"])


def _refuse(source: str, message: str):
    raise ConfigError(f"{source}: {message}")


def output_base(model_path: Path) -> str:
    """sequifier-x-best-3.pt and sequifier-x-best-embedding-3.onnx -> sequifier-x-best."""
    match = EXPORT_NAME.match(Path(model_path).stem)
    return match.group("base") if match else Path(model_path).stem


def _check_columns(plan: InferPlan, args, data_metadata: Metadata, metadata_name: str) -> None:
    config = plan.config
    inputs = [(name, kind) for name, kind, *_ in args.input_columns]
    names = [name for name, _ in inputs]
    if config["input_columns"] is not None and list(config["input_columns"]) != names:
        plan.fail(f"input_columns: {config['input_columns']}, but the model reads {names}")
    if config["seq_length"] is not None and config["seq_length"] != args.seq_length:
        plan.fail(f"seq_length: {config['seq_length']}, but the model reads {args.seq_length} items")
    kinds = data_metadata.column_types
    for name, kind in inputs:
        if name not in kinds:
            plan.fail(
                f"the model reads column '{name}', which the data ({metadata_name}) does not have; "
                f"its columns: {', '.join(kinds)}"
            )
        if kinds[name] != kind:
            plan.fail(f"column '{name}' is {kinds[name]} in the data ({metadata_name}), {kind} in the model")
    width = args.window_length  # the inputs and the item target_offset steps after them
    if width > data_metadata.seq_length:
        ahead = f" and predicts {args.target_offset} steps ahead" if args.target_offset > 1 else ""
        plan.fail(
            f"the model reads {args.seq_length} items{ahead}, but the windows of {metadata_name} hold "
            f"{data_metadata.seq_length} + 1; preprocess with seq_length >= {width}"
        )


def _targets(plan: InferPlan, args) -> tuple[list, list, list]:
    config = plan.config
    kinds = {name: kind for name, kind, _ in args.target_columns}
    targets = config["target_columns"] or list(kinds)
    for name in targets:
        if name not in kinds:
            plan.fail(f"target_columns: '{name}' is not a target of the model ({', '.join(kinds)})")
    categorical = [name for name in targets if kinds[name] == "categorical"]
    probabilities = categorical if config["output_probabilities"] else []  # real targets have none
    if config["output_probabilities"] and not categorical:
        plan.fail(
            f"output_probabilities: true, but the targets written ({', '.join(targets)}) are all real "
            "and have no probabilities; write a categorical target "
            f"({', '.join(n for n, k in kinds.items() if k == 'categorical') or 'the model has none'}), "
            "or set output_probabilities: false"
        )
    sampled = config["sample_from_distribution_columns"] or []
    gaussian = [name for name in targets if name in args.gaussian_targets]  # real, with a distribution
    for name in sampled:
        if name not in categorical and name not in gaussian:
            plan.fail(
                f"sample_from_distribution_columns: '{name}' is not a categorical target written "
                f"({', '.join(categorical) or 'none'}) nor a real one with a predicted distribution "
                f"({', '.join(gaussian) or 'none'}); a real target is sampled from the normal distribution "
                "of a model trained with training_spec.criterion: {TARGET: GaussianNLLLoss}"
            )
    if config["autoregression"] and args.target_offset > 1:
        plan.fail(
            f"autoregression: true, but the model predicts the item target_offset {args.target_offset} steps "
            "ahead; autoregression feeds each prediction back as the next input item, which needs a model "
            "of target_offset 1"
        )
    if sampled:
        sampling.check_columns(config, sampled, categorical, plan.fail)
    if config["autoregression"]:
        missing = [name for name, *_ in args.input_columns if name not in targets]
        if missing:
            plan.fail(
                f"autoregression feeds every prediction back as input, but input column '{missing[0]}' is "
                f"not among the targets written ({', '.join(targets)}); autoregression needs a model whose "
                "targets include all its input columns"
            )
    return targets, probabilities, sampled


def model_setup(plan: InferPlan, model_path: Path, args, description: dict) -> ModelSetup:
    """Check a loaded model against the config and its data; say how the data is read."""
    config = plan.config
    if description["kind"] != config["model_type"]:
        wanted = (
            "sequifier-NAME-best-embedding-EPOCH"
            if config["model_type"] == "embedding"
            else "sequifier-NAME-best-EPOCH"
        )
        plan.fail(
            f"model_type: {config['model_type']}, but {model_path} is the {description['kind']} export; "
            f"give a {config['model_type']} model ({wanted})"
        )
    if config["infer_with_dropout"] and model_path.suffix == ".onnx" and not description["with_dropout"]:
        plan.fail(
            f"infer_with_dropout: true, but {model_path} was exported without dropout; "
            "use the pt model, or train with export_with_dropout: true"
        )
    check_masked(config, args, plan.fail)
    model_metadata = Metadata.from_dict(
        description["metadata"], f"the metadata of {model_path}", "train the model again"
    )
    if config["metadata_config_path"]:
        metadata_path = plan.root / config["metadata_config_path"]
        data_metadata, metadata_name = Metadata.load(metadata_path), str(metadata_path)
    else:
        data_metadata, metadata_name = model_metadata, f"the metadata of {model_path}"
    _check_columns(plan, args, data_metadata, metadata_name)
    targets, probabilities, sampled = (
        _targets(plan, args) if config["model_type"] == "generative" else ([], [], [])
    )
    data_path = plan.root / (config["data_path"] or data_metadata.split_paths[-1])
    inputs = [name for name, *_ in args.input_columns]
    if config["metadata_config_path"]:
        remedy = (
            "set metadata_config_path to the metadata these windows were written with, or data_path to "
            f"the windows of {metadata_name}"
        )
        if data_metadata.fingerprint != model_metadata.fingerprint:
            log.info(
                "%s: the data's metadata (%s) is not the model's: ids are matched by value, real values "
                "rescaled to the model's statistics", model_path.name, metadata_name,
            )  # fmt: skip
    else:
        remedy = (
            "the model reads its own preprocessed data; for other data, set metadata_config_path to the "
            "metadata these windows were written with (their values are then matched to the model's ids)"
        )
    windows = WindowSource.of(
        data_metadata,
        data_path,
        config["read_format"],
        inputs,
        args.window_length,
        metadata_name,
        remedy=remedy,
    )
    return ModelSetup(
        output_base(model_path),
        data_path,
        data_metadata,
        model_metadata,
        windows,
        targets,
        probabilities,
        sampled,
    )
