"""Exported models: pt bundles and ONNX files, generative or embedding.

A pt bundle is self-contained: the model's arguments and weights, the resolved train config and
the metadata, so inference needs nothing else. An ONNX file takes one tensor per input column,
named by the column ([batch, seq_length], a dynamic batch axis), gives next_{target} (logits or
values of the next item) or sequence_embedding, and holds its weights in the one file. It also
carries the bundle's description without the weights (kind, epoch, model arguments, config and
metadata) as JSON in its metadata property CONTRACT, so ONNX inference needs nothing else either.
"""

import copy
import json
import logging
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from sequifier.errors import DataError
from sequifier.files import atomic_path
from sequifier.model import EmbeddingHead, GenerativeHead, ModelArgs, Transformer

log = logging.getLogger(__name__)
FORMAT = "sequifier-model/1"
CONTRACT = "sequifier"


def describe(model: Transformer, kind: str, epoch: int, config: dict, metadata: dict, dropout: bool) -> dict:
    """What a bundle holds besides the weights."""
    return {
        "format": FORMAT,
        "kind": kind,
        "epoch": epoch,
        "with_dropout": dropout,
        "model_args": model.args.to_dict(),
        "config": config,
        "metadata": metadata,
    }


def write_bundle(path: Path, model: Transformer, description: dict):
    bundle = {**description, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(bundle, tmp)


def load_bundle(path) -> tuple:
    """(model in eval mode, bundle) from a pt bundle; a missing or damaged file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise DataError(
            f"{path}: cannot read this model file ({type(error).__name__}: {str(error)[:200]})"
        ) from None
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise DataError(f"{path}: not a sequifier model bundle (expected format {FORMAT})")
    model = Transformer(ModelArgs.from_dict(bundle["model_args"]))
    model.load_state_dict(bundle["state_dict"])
    return model.train(bundle["with_dropout"]), bundle


def export_head(model: Transformer, kind: str) -> torch.nn.Module:
    return GenerativeHead(model) if kind == "generative" else EmbeddingHead(model)


def example_inputs(args: ModelArgs, batch: int = 2) -> tuple:
    return tuple(
        torch.full((batch, args.seq_length), 3, dtype=torch.int32)
        if kind == "categorical"
        else torch.zeros(batch, args.seq_length)
        for _, kind, _, _ in args.input_columns
    )


@contextmanager
def _quiet_exporter():
    """The ONNX exporter's warnings (deprecations, optional torchvision ops) are not the user's business."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        registration.setLevel(level)


def write_onnx(path: Path, model: Transformer, description: dict) -> None:
    """Export with a dynamic batch axis, weights and description inside the file."""
    import onnx

    kind, dropout = description["kind"], description["with_dropout"]
    model = copy.deepcopy(model).cpu().float().train(dropout)
    head = export_head(model, kind).train(dropout)
    args = model.args
    inputs = example_inputs(args)
    input_names = [name for name, *_ in args.input_columns]
    output_names = (
        [f"next_{name}" for name, *_ in args.target_columns]
        if kind == "generative"
        else ["sequence_embedding"]
    )
    batch = torch.export.Dim("batch", min=1)
    with atomic_path(path) as tmp, _quiet_exporter():
        torch.onnx.export(
            head,
            inputs,
            str(tmp),
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=(tuple({0: batch} for _ in inputs),),  # forward(*inputs): one argument
            external_data=False,
            dynamo=True,
            verbose=False,
        )
        proto = onnx.load(str(tmp))
        proto.metadata_props.add(key=CONTRACT, value=json.dumps(description))
        onnx.save(proto, str(tmp))


def read_onnx_description(path: Path, proto) -> dict:
    """The description an ONNX export carries; a file without one is a clear error."""
    props = {prop.key: prop.value for prop in proto.metadata_props}
    description = json.loads(props[CONTRACT]) if CONTRACT in props else None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise DataError(f"{path}: not an ONNX model exported by sequifier train (no {FORMAT} description)")
    return description


def export_run(plan, last: Transformer, best_state: dict | None, best_epoch: int, last_epoch: int) -> list:
    """Write the best and last models of a training run as its config asks; returns the files.

    The exports of an earlier run of the same model name are removed first, so the models folder
    holds one best and one last model per name."""
    config, written = plan.config, []
    exported = re.compile(rf"sequifier-{re.escape(plan.name)}-(best|last)(-embedding)?-\d+\.(pt|onnx)$")
    for stale in plan.models.glob(f"sequifier-{plan.name}-*"):
        if exported.match(stale.name):
            stale.unlink()
    last = copy.deepcopy(last).cpu()
    best = copy.deepcopy(last)
    if best_state is None:
        log.warning("no validation loss was finite; the best model is the last one")
    else:
        best.load_state_dict(best_state)
    kinds = [kind for kind in ("generative", "embedding") if config[f"export_{kind}_model"]]
    suffixes = [suffix for suffix in ("pt", "onnx") if config[f"export_{suffix}"]]
    dropout = config["export_with_dropout"]
    for label, model, epoch in (("best", best, best_epoch), ("last", last, last_epoch)):
        for kind in kinds:
            description = describe(model, kind, epoch, config, plan.metadata, dropout)
            for suffix in suffixes:
                path = plan.model_path(label, epoch, kind == "embedding", suffix)
                if suffix == "pt":
                    write_bundle(path, model, description)
                else:
                    write_onnx(path, model, description)
                written.append(path)
    return written
