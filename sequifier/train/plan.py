"""The train config made complete: what the schema cannot check, and what it leaves to the data.

`make_train_plan` reads the metadata, fills every derived value (data paths, columns and their
types, seq_length, encoder widths, criteria) into the config, checks the settings that depend on
each other, and returns the paths the run writes. The resolved config is what checkpoints and
exported models record.
"""

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from sequifier import config as stage_config
from sequifier.data.metadata import Metadata, metadata_path_of
from sequifier.data.window_files import WindowSource
from sequifier.errors import ConfigError
from sequifier.model.network import ModelArgs
from sequifier.train.metrics import metrics_file
from sequifier.train.optim import optimizer_class
from sequifier.train.transfer import check_plan

log = logging.getLogger(__name__)
REAL_CRITERIA = ("MSELoss", "L1Loss", "HuberLoss", "GaussianNLLLoss")


@dataclass(frozen=True)
class TrainPlan:
    config: dict  # resolved: every derived value filled in
    source: str
    metadata: Metadata
    metadata_path: Path
    train_path: Path
    validation_path: Path
    models: Path
    checkpoints: Path
    logs: Path

    @property
    def name(self) -> str:
        return self.config["model_name"]

    def model_path(self, label: str, epoch: int, embedding: bool, suffix: str) -> Path:
        kind = "-embedding" if embedding else ""
        return self.models / f"sequifier-{self.name}-{label}{kind}-{epoch}.{suffix}"

    @property
    def metrics_path(self) -> Path:
        return metrics_file(self.logs, self.name)

    @property
    def log_path(self) -> Path:
        return self.logs / f"sequifier-{self.name}.log"

    def window_source(self, path: Path) -> WindowSource:
        """How to read the windows at `path`: the stored columns, and the ones the model uses."""
        config = self.config
        keep = dict.fromkeys([*config["input_columns"], *config["target_columns"]])
        return WindowSource.of(
            self.metadata, path, config["read_format"], keep, self.model_args().window_length,
            str(self.metadata_path),
            remedy="set metadata_config_path to the metadata they were written with, or "
            "training_data_path and validation_data_path to this metadata's windows (null: its own)",
        )  # fmt: skip

    def model_args(self) -> ModelArgs:
        spec, metadata = self.config["model_spec"], self.metadata
        kinds, classes = metadata.column_types, metadata.n_classes
        widths = spec["feature_embedding_dims"]
        return ModelArgs(
            input_columns=tuple(
                (c, kinds[c], classes.get(c, 0), widths[c]) for c in self.config["input_columns"]
            ),
            target_columns=tuple((c, kinds[c], classes.get(c, 0)) for c in self.config["target_columns"]),
            seq_length=self.config["seq_length"],
            dim_model=spec["dim_model"],
            n_head=spec["n_head"],
            n_kv_heads=spec["n_kv_heads"],
            dim_feedforward=spec["dim_feedforward"],
            num_layers=spec["num_layers"],
            activation_fn=spec["activation_fn"],
            normalization=spec["normalization"],
            norm_first=spec["norm_first"],
            positional_encoding=spec["positional_encoding"],
            rope_theta=spec["rope_theta"],
            dropout=self.config["training_spec"]["dropout"],
            target_offset=self.config["target_offset"],
            gaussian_targets=tuple(
                name
                for name, loss in self.config["training_spec"]["criterion"].items()
                if loss == "GaussianNLLLoss"
            ),
            objective=self.config["objective"],
        )


def _find_metadata(config: dict, source: str) -> Path:
    root = Path(config["project_root"])
    if config["metadata_config_path"]:
        return root / config["metadata_config_path"]
    preprocess = stage_config.load_linked(
        "preprocess", root, config, "preprocess_config_path", source, "metadata_config_path"
    )
    preprocess["project_root"] = str(root / preprocess["project_root"])  # both configs are of this project
    return metadata_path_of(preprocess)


def _columns(config: dict, metadata: Metadata, fail) -> None:
    columns, kinds = metadata.columns, metadata.column_types
    inputs = config["input_columns"] or list(columns)
    targets = config["target_columns"] or list(inputs)
    for key, names in (("input_columns", inputs), ("target_columns", targets)):
        for name in names:
            if name not in columns:
                fail(f"{key}: '{name}' is not a column of the data; columns: {', '.join(columns)}")
    given = config["target_column_types"] or {}
    for name, kind in given.items():
        if name not in targets:
            fail(f"target_column_types: '{name}' is not a target column ({', '.join(targets)})")
        if kind != kinds[name]:
            fail(f"target_column_types.{name}: '{kind}', but the data's column is {kinds[name]}")
    config["input_columns"], config["target_columns"] = inputs, targets
    config["target_column_types"] = {name: kinds[name] for name in targets}


def _model_spec(config: dict, fail) -> None:
    spec, inputs = config["model_spec"], config["input_columns"]
    dim, heads = spec["dim_model"], spec["n_head"]
    if dim % heads:
        fail(f"model_spec.n_head: {heads} does not divide model_spec.dim_model ({dim})")
    kv = {"mha": heads, "mqa": 1}.get(spec["attention_type"], spec["n_kv_heads"])
    if spec["attention_type"] == "gqa" and kv is None:
        fail("model_spec.n_kv_heads: null, but attention_type gqa needs a number of key/value heads")
    if spec["n_kv_heads"] is not None and spec["n_kv_heads"] != kv:
        fail(
            f"model_spec.n_kv_heads: {spec['n_kv_heads']} contradicts attention_type "
            f"{spec['attention_type']} ({kv} key/value heads)"
        )
    if heads % kv:
        fail(f"model_spec.n_kv_heads: {kv} does not divide model_spec.n_head ({heads})")
    spec["n_kv_heads"] = kv
    if spec["positional_encoding"] == "rope" and (dim // heads) % 2:
        fail(
            f"model_spec.positional_encoding: rope needs an even head width; "
            f"dim_model/n_head is {dim // heads}"
        )
    widths, joint = spec["feature_embedding_dims"], spec["joint_embedding_dim"]
    if widths is not None:
        if set(widths) != set(inputs):
            fail(
                f"model_spec.feature_embedding_dims: has {sorted(widths)}; "
                f"expected one width per input column {inputs}"
            )
        if joint is not None and sum(widths.values()) != joint:
            fail(
                f"model_spec.feature_embedding_dims: {widths} sum to {sum(widths.values())}, "
                f"not to model_spec.joint_embedding_dim ({joint})"
            )
        joint = sum(widths.values())
    else:
        joint = joint or dim
        if joint < len(inputs):
            fail(f"model_spec.joint_embedding_dim: {joint} is less than one per input column ({len(inputs)})")
        share, extra = divmod(joint, len(inputs))
        widths = {name: share + (i < extra) for i, name in enumerate(inputs)}
    spec["feature_embedding_dims"], spec["joint_embedding_dim"] = {c: widths[c] for c in inputs}, joint


def _training_spec(config: dict, metadata: Metadata, fail) -> None:
    spec, kinds = config["training_spec"], config["target_column_types"]
    categorical = [c for c, kind in kinds.items() if kind == "categorical"]
    try:
        optimizer_class(spec["optimizer"])  # a bad name is refused before any window is read
    except ConfigError as error:
        fail(str(error))
    criteria = {}
    for name, kind in kinds.items():
        criteria[name] = spec["criterion"].get(
            name, "CrossEntropyLoss" if kind == "categorical" else "MSELoss"
        )
        allowed = ("CrossEntropyLoss",) if kind == "categorical" else REAL_CRITERIA
        if criteria[name] not in allowed:
            fail(
                f"training_spec.criterion.{name}: '{criteria[name]}' for a {kind} target; "
                f"allowed: {', '.join(allowed)}"
            )
    for key in ("criterion", "loss_weights"):
        for name in spec[key] or {}:
            if name not in kinds:
                fail(f"training_spec.{key}: '{name}' is not a target column ({', '.join(kinds)})")
    spec["criterion"] = criteria
    spec["loss_weights"] = {name: (spec["loss_weights"] or {}).get(name, 1.0) for name in kinds}
    for name, weights in (spec["class_weights"] or {}).items():
        if name not in categorical:
            fail(
                f"training_spec.class_weights: '{name}' is not a categorical target "
                f"({', '.join(categorical)})"
            )
        if len(weights) != metadata.n_classes[name]:
            fail(
                f"training_spec.class_weights.{name}: {len(weights)} weights; expected one per class id "
                f"({metadata.n_classes[name]}, ids 0-2 reserved)"
            )
    for name in spec["class_share_log_columns"]:
        if name not in categorical:
            fail(
                f"training_spec.class_share_log_columns: '{name}' is not a categorical target "
                f"({', '.join(categorical)})"
            )


def _seq_length(config: dict, metadata: Metadata, metadata_path: Path, fail) -> int:
    """The context length: a window read holds seq_length + target_offset items (inputs, then the
    target k steps after the last of them), out of the W + 1 items preprocess stored."""
    offset, stored = config["target_offset"], metadata.seq_length + 1
    seq_length = config["seq_length"] or stored - offset
    if seq_length < 1 or seq_length + offset > stored:
        if offset == 1:
            fail(
                f"seq_length: {seq_length} is longer than the preprocessed windows ({metadata.seq_length} "
                f"in {metadata_path}); preprocess again with a larger seq_length or train with a smaller one"
            )
        longest = f"seq_length <= {stored - offset}" if stored > offset else "a smaller target_offset"
        fail(
            f"target_offset: {offset} with seq_length: {config['seq_length'] or 'null'} needs windows of "
            f"{max(seq_length, 1) + offset} items, but the preprocessed windows hold {stored} (seq_length "
            f"{metadata.seq_length} in {metadata_path}); train with {longest}, or preprocess again with "
            f"seq_length >= {max(seq_length, 1) + offset - 1}"
        )
    config["seq_length"] = seq_length
    return seq_length


def make_train_plan(loaded: dict, source: str = "train config") -> TrainPlan:
    config = copy.deepcopy(loaded)

    def fail(message: str):
        raise ConfigError(f"{source}: {message}")

    root = Path(config["project_root"])
    metadata_path = _find_metadata(config, source)
    metadata = Metadata.load(metadata_path)
    config["metadata_config_path"] = os.path.relpath(metadata_path, root)  # as every path: relative to root
    _columns(config, metadata, fail)
    if config["objective"] == "masked" and config["target_offset"] != 1:
        fail(
            f"objective: masked with target_offset: {config['target_offset']}: a masked model predicts the "
            "items it reads (in place); use target_offset: 1, or objective: causal for k steps ahead"
        )
    seq_length = _seq_length(config, metadata, metadata_path, fail)
    prediction_length = config["model_spec"]["prediction_length"] or seq_length
    if prediction_length > seq_length:
        fail(f"model_spec.prediction_length: {prediction_length} is longer than seq_length ({seq_length})")
    config["model_spec"]["prediction_length"] = prediction_length
    _model_spec(config, fail)
    _training_spec(config, metadata, fail)
    if not metadata.categorical_columns and not metadata.normalize_real_columns:
        log.warning(
            "only real columns, not normalized: leading slots that are 0.0 in every column count as padding "
            "(no target); preprocess with normalize_real_columns: true or a categorical column to avoid it"
        )
    paths = metadata.split_paths
    if len(paths) == 1 and not config["validation_data_path"]:
        log.warning("the data has one split: validating on the training windows (%s)", paths[0])
    config["training_data_path"] = config["training_data_path"] or paths[0]
    config["validation_data_path"] = config["validation_data_path"] or paths[min(1, len(paths) - 1)]
    config["read_format"] = config["read_format"] or metadata.write_format
    config["wandb"]["name"] = config["wandb"]["name"] or config["model_name"]
    plan = TrainPlan(
        config,
        source,
        metadata,
        metadata_path,
        root / config["training_data_path"],
        root / config["validation_data_path"],
        root / config["models_path"],
        root / config["checkpoints_path"],
        root / config["logs_path"],
    )
    check_plan(plan)  # init_from: every mismatch before any window is read
    return plan
