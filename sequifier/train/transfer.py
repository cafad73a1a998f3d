"""Fine-tuning: a training that starts from another model's weights (`init_from`), and the parts
of the model that do not train (`training_spec.freeze`).

`init_from` names a pt bundle (as exported) or a training checkpoint. The new model takes its
weights where they fit: the blocks, the final norm and the positions must have the same shapes
(`STRUCTURE`), while input encoders and heads are matched by column name. A column that is new
gets a fresh encoder or head; a categorical column whose id map changed (a grown vocabulary) takes
the rows of the values both id maps know, matched by value, and fresh rows for the others; the log
says which. Settings that change what the same weights mean are bridged, with a log line: another
`objective` (causal or masked attention: the blocks start the other kind of training), another
`target_offset` (the heads start predicting another step), a real target with GaussianNLLLoss in
one model only (its head's first row, the mean, is taken; a variance row is fresh or left out).
What cannot be bridged (another dim_model, an input column the model read and this run does not,
a column of another type, ...) is one ConfigError that names every mismatch, raised when the run
is planned (`check_plan`), before any window is read. The optimizer starts fresh; a resumed run
(continue_training) takes its checkpoint instead.

`freeze` names groups of the network (`group_parts`): their weights take no gradient, no weight
decay and are not in the optimizer. A group the model does not have, or freezing every weight, is a
ConfigError at planning too.
"""

import logging
from pathlib import Path

import torch

from sequifier.errors import ConfigError, DataError
from sequifier.model.export import read_bundle
from sequifier.model.network import ModelArgs, Transformer
from sequifier.train import checkpoint

log = logging.getLogger(__name__)
STRUCTURE = (
    "dim_model", "n_head", "n_kv_heads", "dim_feedforward", "num_layers", "activation_fn",
    "normalization", "norm_first", "positional_encoding",
)  # fmt: skip
RESERVED = 3  # ids 0-2 (padding, other, mask) mean the same in every id map
ATTENTION = {"causal": "causal attention (to earlier items)", "masked": "attention to every item (masked)"}


def read_source(path: Path, source: str = "train config") -> tuple:
    """(model arguments, weights, metadata as a dict) of a pt bundle or a training checkpoint."""
    if not path.is_file():
        raise DataError(
            f"{source}: init_from: {path}: not a file (expected a pt model bundle or a training checkpoint)"
        )
    try:
        state = checkpoint.load(path)
    except DataError:  # not a checkpoint: a bundle, or neither (read_bundle says what is wrong)
        try:
            state = read_bundle(path)
        except DataError as error:
            raise DataError(
                f"{source}: init_from: {error} (expected a pt model bundle or a training checkpoint)"
            ) from None
        return ModelArgs.from_dict(state["model_args"]), state["state_dict"], state["metadata"]
    return ModelArgs.from_dict(state["model_args"]), state["model"], state.get("metadata") or {}


def _value_rows(old_map: dict, new_map: dict) -> tuple:
    """(rows of the new id map, rows of the old one) of the reserved ids and the values both know."""
    new_rows, old_rows = list(range(RESERVED)), list(range(RESERVED))
    for value, new_id in new_map.items():
        if value in old_map:
            new_rows.append(new_id)
            old_rows.append(old_map[value])
    return torch.tensor(new_rows), torch.tensor(old_rows)


class Transfer:
    """The weights of a source model carried over to a new one, and what was done to each part."""

    def __init__(self, path: Path, old: ModelArgs, new: ModelArgs, old_metadata: dict, new_metadata: dict):
        self.path, self.old, self.new = path, old, new
        self.old_maps, self.new_maps = old_metadata.get("id_maps", {}), new_metadata.get("id_maps", {})
        self.mismatches, self.notes, self.source = [], [], "train config"

    def check(self, source: str = "train config") -> None:
        """Every mismatch that cannot be bridged, in one ConfigError; the bridged ones, noted."""
        old, new, path, self.source = self.old, self.new, self.path, source
        self._bridged()
        for name in STRUCTURE:
            if getattr(old, name) != getattr(new, name):
                self.mismatches.append(
                    f"model_spec.{name}: {getattr(old, name)!r} in {path}, {getattr(new, name)!r} here"
                )
        if new.positional_encoding == "learned" and new.seq_length > old.seq_length:
            self.mismatches.append(
                f"seq_length: {new.seq_length} is longer than the {old.seq_length} positions learned"
                f" in {path}"
            )
        old_inputs = {name: rest for name, *rest in old.input_columns}
        new_inputs = {name: rest for name, *rest in new.input_columns}
        for name, (kind, _, width) in old_inputs.items():
            if name not in new_inputs:
                self.mismatches.append(
                    f"input_columns: '{name}', an input column of {path}, is not one here "
                    f"({', '.join(new_inputs)})"
                )
            elif new_inputs[name][0] != kind:
                self.mismatches.append(f"column '{name}': {kind} in {path}, {new_inputs[name][0]} here")
            elif new_inputs[name][2] != width:
                self.mismatches.append(
                    f"model_spec.feature_embedding_dims.{name}: {width} in {path}, {new_inputs[name][2]} here"
                )
        added = [name for name in new_inputs if name not in old_inputs]
        projected = [self._joint(args) != args.dim_model for args in (old, new)]
        if added and not all(projected):
            self.mismatches.append(
                f"input_columns: {', '.join(map(repr, added))} new; a new input column needs the joint "
                "embedding projected to dim_model in both models (model_spec.joint_embedding_dim, the sum "
                f"of the widths, other than dim_model: {self._joint(old)} in {path}, {self._joint(new)} here)"
            )
        old_targets = {name: kind for name, kind, _ in old.target_columns}
        for name, kind, _ in new.target_columns:
            if name in old_targets and old_targets[name] != kind:
                self.mismatches.append(f"target column '{name}': {old_targets[name]} in {path}, {kind} here")
        self._refuse()

    def _bridged(self) -> None:
        """Notes on the settings that differ but leave the weights of the same shapes."""
        old, new, path = self.old, self.new, self.path
        if old.objective != new.objective:
            self.notes.append(
                f"objective: {old.objective} in {path}, {new.objective} here: the blocks learned "
                f"{ATTENTION[old.objective]} and start training with {ATTENTION[new.objective]}"
            )
        if old.target_offset != new.target_offset:
            self.notes.append(
                f"target_offset: {old.target_offset} in {path}, {new.target_offset} here: the heads learned "
                f"to predict the item {old.target_offset} step(s) on and start predicting {new.target_offset}"
            )
        if new.positional_encoding == "rope" and old.rope_theta != new.rope_theta:
            self.notes.append(f"model_spec.rope_theta: {old.rope_theta} in {path}, {new.rope_theta} here")

    def _refuse(self) -> None:
        if self.mismatches:
            raise ConfigError(
                f"{self.source}: init_from: {self.path} cannot start this model: "
                f"{'; '.join(self.mismatches)}; set init_from to a model of the same structure, "
                "or change the config to match it"
            )

    @staticmethod
    def _joint(args: ModelArgs) -> int:
        return sum(width for *_, width in args.input_columns)

    def _rows(self, kind: str, what: str, column: str, target: torch.Tensor, source: torch.Tensor) -> None:
        """Copy `source` into `target` (weights of one column): whole, or the rows of the values
        both id maps know (categorical, id maps that differ)."""
        old_map, new_map = self.old_maps.get(column), self.new_maps.get(column)
        if kind != "categorical" or old_map == new_map and target.shape == source.shape:
            self._copy(f"{what} '{column}'", target, source)
            return
        if target.shape[1:] != source.shape[1:]:
            self._copy(f"{what} '{column}'", target, source)  # a mismatch, named
            return
        new_rows, old_rows = _value_rows(old_map or {}, new_map or {})
        target[new_rows] = source[old_rows]
        fresh = len(new_map or {}) - (len(new_rows) - RESERVED)
        self.notes.append(
            f"{what} '{column}': the rows of {len(new_rows) - RESERVED} values matched by value, "
            f"{fresh} new value(s) fresh"
        )

    def apply(self, model: Transformer, weights: dict) -> None:
        """Fill the new model's weights from the source's, as `check` allows."""
        state = {key: value.clone() for key, value in model.state_dict().items()}
        device = next(iter(state.values())).device
        weights = {key: value.to(device) for key, value in weights.items()}
        old_inputs = {name: (i, kind) for i, (name, kind, *_) in enumerate(self.old.input_columns)}
        for i, (name, kind, *_) in enumerate(self.new.input_columns):
            if name not in old_inputs:
                self.notes.append(f"encoder of input column '{name}': new column, fresh")
                continue
            j = old_inputs[name][0]
            for part in ("weight", "bias"):
                key = f"encoders.encoders.{i}.{part}"
                if key in state:
                    self._rows(
                        kind,
                        "encoder of input column",
                        name,
                        state[key],
                        weights[f"encoders.encoders.{j}.{part}"],
                    )
        self._project(state, weights)
        self._mask_vectors(state, weights)
        old_targets = {name: i for i, (name, *_) in enumerate(self.old.target_columns)}
        for i, (name, kind, _) in enumerate(self.new.target_columns):
            if name not in old_targets:
                self.notes.append(f"head of target '{name}': new target, fresh")
                continue
            gaussian = [name in args.gaussian_targets for args in (self.old, self.new)]
            for part in ("weight", "bias"):
                key, source = f"heads.{i}.{part}", weights[f"heads.{old_targets[name]}.{part}"]
                if kind == "real" and gaussian[0] != gaussian[1]:  # row 0, the mean, in both
                    self._copy(f"head of target '{name}'", state[key][:1], source[:1])
                else:
                    self._rows(kind, "head of target", name, state[key], source)
            if kind == "real" and gaussian[0] != gaussian[1]:
                self.notes.append(
                    f"head of target '{name}': the mean taken; "
                    + ("the variance fresh (GaussianNLLLoss here, not in the source)" if gaussian[1] else
                       "the source's variance not used (GaussianNLLLoss there, not here)")
                )  # fmt: skip
        unused = [name for name in old_targets if name not in {n for n, *_ in self.new.target_columns}]
        if unused:
            self.notes.append(f"not used: the head(s) of {', '.join(map(repr, unused))}, not a target here")
        for key, value in state.items():
            if key.startswith(("encoders.", "heads.")):
                continue
            if key not in weights:
                self.notes.append(f"{key}: not in the source model, fresh")
                continue
            source = weights[key]
            self._copy(key, value, source[: value.shape[0]] if key == "positions.weight" else source)
        self._refuse()
        model.load_state_dict(state)

    def _copy(self, what: str, target: torch.Tensor, source: torch.Tensor) -> None:
        """target <- source, or a mismatch noted when their shapes differ."""
        if target.shape == source.shape:
            target.copy_(source)
        else:
            self.mismatches.append(
                f"{what}: weights of shape {tuple(source.shape)} in {self.path}, {tuple(target.shape)} here"
            )

    def _mask_vectors(self, state: dict, weights: dict) -> None:
        """The encodings of a masked real value (a masked model's real input columns), by column name."""
        old, new = (
            {name: i for i, name in enumerate(n for n, kind, *_ in args.input_columns if kind == "real")}
            if args.objective == "masked" else {}
            for args in (self.old, self.new)
        )  # fmt: skip
        for name, i in new.items():
            what = f"mask vector of input column '{name}'"
            if name in old:
                source = weights[f"encoders.mask_vectors.{old[name]}"]
                self._copy(what, state[f"encoders.mask_vectors.{i}"], source)
            else:
                self.notes.append(f"{what}: fresh (not in the source model)")
        unused = [name for name in old if name not in new]
        if unused:
            self.notes.append(
                f"not used: the mask vector(s) of {', '.join(map(repr, unused))}, not masked here"
            )

    def _project(self, state: dict, weights: dict) -> None:
        """The projection of the joint embedding: the columns of each input column known to both."""
        if "encoders.project.weight" not in state:
            return
        target, source = state["encoders.project.weight"], weights["encoders.project.weight"]
        if target.shape == source.shape and self.old.input_columns == self.new.input_columns:
            target.copy_(source)
        else:
            starts, start = {}, 0
            for name, *_, width in self.old.input_columns:
                starts[name], start = start, start + width
            start = 0
            for name, *_, width in self.new.input_columns:
                if name in starts:
                    target[:, start : start + width] = source[:, starts[name] : starts[name] + width]
                start += width
        state["encoders.project.bias"].copy_(weights["encoders.project.bias"])


def source_path(config: dict) -> Path | None:
    """The model file that init_from of a train config names (under project_root), or None."""
    return Path(config["project_root"]) / config["init_from"] if config["init_from"] else None


def _own_checkpoint(plan, path: Path) -> None:
    """Refuse a checkpoint of the run's own model name that a fresh run would remove before reading it."""
    if plan.config["training_spec"]["continue_training"] or not path.is_file():
        return
    real = path.resolve()  # a link to the checkpoint too
    match = checkpoint.NAME.match(real.name)
    if match and match["model"] == plan.name and real.parent == plan.checkpoints.resolve():
        raise ConfigError(
            f"{plan.source}: init_from: {path} is a checkpoint of model_name {plan.name}, which this run "
            "starts anew (training_spec.continue_training: false), removing the checkpoints of that name, "
            f"this one too, before training; copy it out of {plan.checkpoints} and set init_from to the "
            "copy, or use another model_name, or set training_spec.continue_training: true to resume it"
        )


def check_plan(plan) -> None:
    """At planning, before any window is read: the groups `freeze` names are the model's, and the
    `init_from` of a TrainPlan can start its model (a ConfigError naming every mismatch if not).
    No init_from to check where a run will resume from its own checkpoint: it does not read it."""
    config = plan.config
    check_freeze(plan.model_args(), config["training_spec"]["freeze"], plan.source)
    path = source_path(config)
    if path is None:
        return
    if config["training_spec"]["continue_training"] and checkpoint.latest(plan.checkpoints, plan.name):
        return
    _own_checkpoint(plan, path)
    old_args, _, old_metadata = read_source(path, plan.source)
    Transfer(path, old_args, plan.model_args(), old_metadata, plan.metadata.to_dict()).check(plan.source)


@torch.no_grad()
def init_from(model: Transformer, path: Path, metadata: dict, source: str = "train config") -> None:
    """Start `model` (of the data described by `metadata`) from the weights of the model at `path`."""
    old_args, weights, old_metadata = read_source(path, source)
    transfer = Transfer(path, old_args, model.args, old_metadata, metadata)
    transfer.check(source)
    transfer.apply(model, weights)
    log.info("init_from %s: the weights of the model taken (optimizer fresh)", path)
    for note in dict.fromkeys(transfer.notes):  # once each (a weight and its bias)
        log.info("init_from: %s", note)
    if old_args.objective != model.args.objective and not all(
        p.requires_grad for p in model.blocks.parameters()
    ):
        log.warning(
            "init_from: frozen blocks learned %s; they will not adapt to %s (objective: %s)",
            ATTENTION[old_args.objective], ATTENTION[model.args.objective], model.args.objective,
        )  # fmt: skip


def group_parts(args: ModelArgs) -> dict:
    """The groups of the network that `freeze` names, each with the parts it covers (together, the
    parts hold every weight of the model)."""
    blocks = [f"blocks.{i}" for i in range(args.num_layers)]
    heads = [f"heads.{name}" for name, *_ in args.target_columns]
    found = {"encoders": ["encoders"]}
    if args.positional_encoding == "learned":
        found["positions"] = ["positions"]
    found |= {"blocks": blocks} | {block: [block] for block in blocks} | {"final_norm": ["final_norm"]}
    return found | {"heads": heads} | {head: [head] for head in heads}


def check_freeze(args: ModelArgs, names: list, source: str) -> None:
    """A ConfigError for a group the model does not have, or groups that freeze every weight."""
    found = group_parts(args)
    unknown = [name for name in names if name not in found]
    if unknown:
        raise ConfigError(
            f"{source}: training_spec.freeze: {', '.join(map(repr, unknown))} not a group of this model; "
            f"its groups: {', '.join(found)}"
        )
    every = {part for parts in found.values() for part in parts}
    if every <= {part for name in names for part in found[name]}:
        raise ConfigError(
            f"{source}: training_spec.freeze: {names} freezes every weight of the model; nothing would train"
        )


def freeze(model: Transformer, names: list) -> None:
    """Frozen: the weights of the groups named (checked by `check_freeze` when the run was planned)
    take no gradient, so no weight decay, and the optimizer leaves them out."""
    if not names:
        return
    modules = {"encoders": model.encoders, "positions": model.positions, "final_norm": model.final_norm}
    modules |= {f"blocks.{i}": block for i, block in enumerate(model.blocks)}
    modules |= {f"heads.{name}": head for (name, *_), head in zip(model.args.target_columns, model.heads)}
    found = group_parts(model.args)
    for name in names:
        for part in found[name]:
            modules[part].requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("frozen: %s (%d of %d weights train)", ", ".join(names), trainable, total)
