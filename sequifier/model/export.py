"""Exported models: pt bundles and ONNX files, generative or embedding.

A pt bundle is self-contained: the model's arguments and weights, the resolved train config and the
metadata, so inference needs nothing else. An ONNX file takes one tensor per input column ([batch,
seq_length], a dynamic batch axis), gives next_{target} (logits or values of the next item;
ahead{k}_{target} of a model with target_offset k > 1; filled_{target}, every position's, of a
masked model) or sequence_embedding (position_embeddings of a masked model), and holds its weights
in the one file. Its inputs and outputs are named by the columns where a column name is a plain
identifier (letters, digits, `_`), else by position (input_{i}, next_{i}); see `onnx_names`. It
also carries the bundle's description without the weights (kind, epoch, model arguments, config and
metadata, and the ONNX names in column order) as JSON in its metadata property CONTRACT, so ONNX
inference needs nothing else either.

Both carry a sha256 checksum of their content (`checksum`: weights and description; in ONNX the
property CHECKSUM, over the graph with its weights and the description), verified when the file
is read: a file damaged on disk or in a copy is refused instead of giving wrong numbers.
"""

import copy
import hashlib
import json
import logging
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from sequifier.data.columns import IDENTIFIER, plain_names
from sequifier.errors import DataError, first_line
from sequifier.files import UnsafeFileError, atomic_path, torch_load_plain, torch_save
from sequifier.model.network import EmbeddingHead, GenerativeHead, ModelArgs, Transformer

log = logging.getLogger(__name__)
FORMAT = "sequifier-model/2"
EARLIER_FORMATS = {
    "sequifier-model/1": "it carries no checksum of its weights, so damage cannot be told, and keys its "
    "weights by column name"
}
CONTRACT = "sequifier"
CHECKSUM = "sequifier-sha256"
DAMAGED = "the file is damaged: export it again (train again), or copy it again from where it is intact"


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
    """Save a bundle of tensors and plain data only (dicts, lists, str, numbers), so that it loads
    with torch.load(weights_only=True)."""
    weights = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    bundle = {**_plain(description), "state_dict": weights}
    bundle["checksum"] = bundle_checksum(bundle)
    with atomic_path(path) as tmp:
        torch_save(bundle, tmp)


def _canonical(value):
    """A description as JSON text that does not depend on the order of keys (keys as text)."""

    def keyed(item):
        if isinstance(item, dict):
            return {str(key): keyed(inner) for key, inner in item.items()}
        if isinstance(item, (list, tuple)):
            return [keyed(inner) for inner in item]
        return item

    return json.dumps(keyed(value), sort_keys=True)


def bundle_checksum(bundle: dict) -> str:
    """sha256 over a bundle's description and its weights (names, types, shapes and bytes)."""
    digest = hashlib.sha256()
    description = {key: value for key, value in bundle.items() if key not in ("state_dict", "checksum")}
    digest.update(_canonical(description).encode())
    for key in sorted(bundle["state_dict"]):
        tensor = bundle["state_dict"][key].detach().cpu().contiguous()
        digest.update(f"\n{key} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return f"sha256:{digest.hexdigest()}"


def _check_format(path: Path, found, what: str) -> None:
    if found in EARLIER_FORMATS:
        raise DataError(
            f"{path}: a model of format {found}, written by an earlier version of sequifier "
            f"({EARLIER_FORMATS[found]}); train the model again with this version"
        )
    if found != FORMAT:
        raise DataError(f"{path}: not {what} (expected format {FORMAT})")


def _plain(value):
    """`value` as tensors and plain data: dicts, lists, tuples, str, numbers, bools and None
    (numpy scalars become numbers, anything else its text)."""
    if isinstance(value, dict):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    if value is None or isinstance(value, (str, bool, int, float, torch.Tensor)):
        return value
    if hasattr(value, "item") and hasattr(value, "dtype"):  # a numpy scalar
        return value.item()
    return str(value)


def read_bundle(path) -> dict:
    """The contents of a pt bundle (description and state_dict), loaded safely without building the
    model: only tensors and plain data are read (torch.load with weights_only=True), never objects
    whose unpickling could run code. A missing, damaged or foreign file is a clear DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found")
    try:
        bundle = torch_load_plain(path)
    except UnsafeFileError as error:
        raise DataError(
            f"{path}: this model file holds objects other than tensors and plain data "
            f"({', '.join(error.names)}); it is not loaded, since unpickling them could run code. "
            "A sequifier model bundle holds only weights, numbers, strings, lists and dicts; "
            "export the model again with sequifier train"
        ) from None
    except Exception as error:
        raise DataError(
            f"{path}: cannot read this model file ({type(error).__name__}: {first_line(error)})"
        ) from None
    found = bundle.get("format") if isinstance(bundle, dict) else None
    _check_format(path, found, "a sequifier model bundle")
    weights = bundle.get("state_dict")
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise DataError(f"{path}: not a sequifier model bundle (its state_dict is not a dict of tensors)")
    try:
        found = bundle_checksum(bundle)
    except (TypeError, ValueError) as error:  # a description that is not plain data
        raise DataError(f"{path}: not a sequifier model bundle ({first_line(error)})") from None
    if bundle.get("checksum") != found:
        raise DataError(f"{path}: the checksum of its weights and description does not match; {DAMAGED}")
    return bundle


def load_bundle(path) -> tuple:
    """(model in eval mode, bundle) from a pt bundle, read safely (read_bundle); a missing or
    damaged file is a clear error."""
    bundle = read_bundle(path)
    model = Transformer(ModelArgs.from_dict(bundle["model_args"]))
    load_weights(model, bundle["state_dict"], path)
    return model.train(bundle["with_dropout"]), bundle


def load_weights(model: Transformer, weights: dict, path, again: str = "train the model again") -> None:
    """`model.load_state_dict(weights)`; weights that do not fit (those of a model file written by
    an earlier version of sequifier, which kept them by column name) are a clear DataError that
    ends with `again`, what to do."""
    expected, found = set(model.state_dict()), set(weights)
    if expected == found:
        try:
            model.load_state_dict(weights)
            return
        except RuntimeError as error:
            raise DataError(
                f"{path}: its weights do not fit the model its arguments describe ({first_line(error)}); "
                f"the file is damaged: {again}"
            ) from None
    by_name = any(re.match(r"(encoders\.encoders|heads)\.[^\d]", key) for key in found)
    example = sorted(found - expected)[:1] + sorted(expected - found)[:1]
    cause = (
        "it was written by an earlier version of sequifier, which kept the weights by column name"
        if by_name
        else "it was not written by this version of sequifier"
    )
    raise DataError(
        f"{path}: its weights are not those of the model it describes (e.g. {', '.join(example)}); "
        f"{cause}: {again}"
    )


def find_export(models: Path, name: str, label: str = "best", embedding: bool = False, suffix: str = "pt"):
    """The exported model sequifier-{name}-{label}[-embedding]-{epoch}.{suffix} in `models`, or None.

    Normally there is one. After a training interrupted between writing its exports and removing
    those of an earlier run, there are two: the newest file is taken (then the highest epoch)."""
    kind = "-embedding" if embedding else ""
    pattern = re.compile(rf"sequifier-{re.escape(name)}-{label}{kind}-(\d+)\.{suffix}$")
    found = [
        (path.stat().st_mtime_ns, int(match.group(1)), path)
        for path in (Path(models).glob(f"sequifier-{name}-*.{suffix}") if Path(models).is_dir() else [])
        if (match := pattern.match(path.name))
    ]
    return max(found)[2] if found else None


def export_head(model: Transformer, kind: str) -> torch.nn.Module:
    return GenerativeHead(model) if kind == "generative" else EmbeddingHead(model)


def example_inputs(args: ModelArgs, batch: int = 2) -> tuple:
    return tuple(
        torch.full((batch, args.seq_length), 3, dtype=torch.int32)
        if kind == "categorical"
        else torch.zeros(batch, args.seq_length)
        for _, kind, _, _ in args.input_columns
    )


def onnx_names(args: ModelArgs, kind: str) -> tuple[list, list]:
    """(input names, output names) of an ONNX export, in column order: each column's name where it
    is a plain identifier, else input_{i} (next_{i}) by its position; all by position should that
    name two alike. The names are kept in the export's description (onnx_inputs, onnx_outputs)."""
    inputs = plain_names([name for name, *_ in args.input_columns], IDENTIFIER, "input_")
    masked = args.objective == "masked"
    if kind != "generative":
        return inputs, ["position_embeddings" if masked else "sequence_embedding"]
    targets = plain_names([name for name, *_ in args.target_columns], IDENTIFIER, "")
    prefix = "filled" if masked else "next" if args.target_offset == 1 else f"ahead{args.target_offset}"
    return inputs, [f"{prefix}_{name}" for name in targets]


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
    input_names, output_names = onnx_names(args, kind)
    description = {**description, "onnx_inputs": input_names, "onnx_outputs": output_names}
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
        contract = json.dumps(description)
        proto.metadata_props.add(key=CONTRACT, value=contract)
        proto.metadata_props.add(key=CHECKSUM, value=onnx_checksum(proto, contract))
        onnx.save(proto, str(tmp))


def onnx_checksum(proto, contract: str) -> str:
    """sha256 over an ONNX model's graph (with its weights), its functions and its description."""
    digest = hashlib.sha256(proto.graph.SerializeToString())
    for function in proto.functions:
        digest.update(function.SerializeToString())
    digest.update(contract.encode())
    return f"sha256:{digest.hexdigest()}"


def read_onnx_description(path: Path, proto) -> dict:
    """The description an ONNX export carries, its checksum verified; a file without one, or
    damaged, is a clear error."""
    props = {prop.key: prop.value for prop in proto.metadata_props}
    contract, checksum = props.get(CONTRACT), props.get(CHECKSUM)
    if contract is not None and checksum is not None and checksum != onnx_checksum(proto, contract):
        raise DataError(f"{path}: the checksum of its weights and description does not match; {DAMAGED}")
    try:
        description = json.loads(contract) if contract is not None else None
    except ValueError:
        description = None
    if not isinstance(description, dict) or description.get("format") not in (FORMAT, *EARLIER_FORMATS):
        raise DataError(f"{path}: not an ONNX model exported by sequifier train (no {FORMAT} description)")
    _check_format(path, description["format"], "an ONNX model exported by sequifier train")
    if checksum is None:
        raise DataError(f"{path}: the checksum of its weights and description is missing; {DAMAGED}")
    return description


def exported_files(models: Path, name: str) -> list:
    """The exports of model `name` in `models`: its best and last models, pt and ONNX, generative
    and embedding."""
    exported = re.compile(rf"sequifier-{re.escape(name)}-(best|last)(-embedding)?-\d+\.(pt|onnx)$")
    if not Path(models).is_dir():
        return []
    return sorted(path for path in Path(models).glob(f"sequifier-{name}-*") if exported.match(path.name))
