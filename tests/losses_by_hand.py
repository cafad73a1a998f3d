"""Validation figures computed by hand, for tests: windows read with pandas (or torch for pt
shards), the targets that count chosen from the input table (the items of the split, never from
the windows' own contextSlots), and the model run on them outside the training code."""

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F


def read_windows(path: Path, fmt: str, seq_length: int) -> dict:
    """{"sequence", "start", "values": {column: [windows, W + 1]}} of a file or a folder of shards."""
    files = sorted(path.glob(f"*.{fmt}")) if path.is_dir() else [path]
    if fmt == "pt":
        shards = [torch.load(f, weights_only=True) for f in files]
        return {
            "sequence": np.concatenate([np.asarray(s["sequenceId"]) for s in shards]),
            "start": np.concatenate([s["startItemPosition"].numpy() for s in shards]),
            "values": {c: torch.cat([s["values"][c] for s in shards]).numpy() for c in shards[0]["columns"]},
        }
    read = pd.read_parquet if fmt == "parquet" else pd.read_csv
    table = pd.concat([read(f) for f in files], ignore_index=True)
    names = [str(i) for i in range(seq_length, -1, -1)]
    columns = list(dict.fromkeys(table.inputCol))
    first = table[table.inputCol == columns[0]]
    return {
        "sequence": first.sequenceId.to_numpy(),
        "start": first.startItemPosition.to_numpy(),
        "values": {c: table[table.inputCol == c][names].to_numpy() for c in columns},
    }


def counted(windows: dict, items: set, seq_length: int, offset: int = 1) -> np.ndarray:
    """[windows, S]: whether the target of each position (the last S slots; a model of
    target_offset k reads the last S + k) is one of `items`."""
    width = next(iter(windows["values"].values())).shape[1] - 1
    slots = np.arange(offset, seq_length + offset) + width - (seq_length + offset - 1)
    return np.array(
        [[(s, start + t) in items for t in slots] for s, start in zip(windows["sequence"], windows["start"])],
        dtype=bool,
    ).reshape(len(windows["sequence"]), seq_length)


@torch.no_grad()
def losses_by_hand(model, bundle: dict, windows: dict, items: set) -> dict:
    """{target: mean loss over the counted targets, "total": their sum, "accuracy_{target}": top-1
    over the ordinary classes, "targets": how many counted}."""
    config, column_types = bundle["config"], bundle["metadata"]["column_types"]
    seq_length, kinds = config["seq_length"], config["target_column_types"]
    k = bundle["model_args"].get("target_offset", 1)  # a target: the item k after its input
    values = {c: v[:, -(seq_length + k) :] for c, v in windows["values"].items()}
    inputs = {}
    for c in config["input_columns"]:
        block = torch.tensor(np.ascontiguousarray(values[c][:, :-k]))
        inputs[c] = block.int() if column_types[c] == "categorical" else block.float()
    outputs = model(inputs)
    mask = torch.tensor(counted(windows, items, seq_length, k))
    found = {}
    for name, kind in kinds.items():
        target = torch.tensor(np.ascontiguousarray(values[name][:, k:]))
        if kind == "categorical":
            logits = outputs[name].float()
            per_item = F.cross_entropy(logits.flatten(0, 1), target.long().flatten(), reduction="none")
            right = (logits[..., 3:].argmax(-1) + 3 == target.long()) & mask
            found[f"accuracy_{name}"] = (right.sum() / mask.sum()).item()
        else:
            per_item = F.mse_loss(outputs[name].float(), target.float(), reduction="none")
        found[name] = ((per_item.view_as(mask) * mask).sum() / mask.sum()).item()
    found["total"] = sum(found[name] for name in kinds)
    found["targets"] = int(mask.sum())
    return found
