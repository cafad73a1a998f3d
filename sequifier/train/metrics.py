"""The metrics CSV of a training run (one row per validation, rewritten atomically each time), and
the report of each row to W&B and the log.

Rows of kind `epoch` (epoch 0: the untrained model, before the first optimizer step) and
`interval` hold the model's figures; rows of kind `baseline_last_value`,
`baseline_training_prior` and `baseline_best` (per target the better of the two) the baselines
of the validation split (see `sequifier.train.evaluation`), once, in the validation columns.
"""

import csv
import logging
import math
from pathlib import Path

from sequifier.files import atomic_path

log = logging.getLogger(__name__)


def metrics_file(logs, model_name: str) -> Path:
    """Where the metrics CSV of model `model_name` goes in the logs folder."""
    return Path(logs) / f"sequifier-{model_name}-metrics.csv"


def metric_columns(targets: list, categorical: list) -> list:
    per_target = [f"{split}_loss_{name}" for split in ("train", "validation") for name in targets]
    per_target += [f"validation_accuracy_{name}" for name in categorical]
    return [
        "epoch",
        "batch",
        "kind",
        "train_loss",
        "validation_loss",
        *per_target,
        "learning_rate",
        "windows_per_s",
        "elapsed_s",
    ]


def write_metrics(path: Path, columns: list, rows: list) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _format(v) for k, v in row.items()})


def _format(value):
    return repr(value) if isinstance(value, float) and math.isfinite(value) else value


def tracked(row: dict) -> dict:
    """A metrics row as logged to W&B: train/..., validation/... and the rest."""
    out = {}
    for key, value in row.items():
        if key in ("epoch", "batch", "kind") or value is None:
            continue
        for split in ("train", "validation"):
            if key.startswith((f"{split}_loss", f"{split}_accuracy")):
                key = f"{split}/{key[len(split) + 1 :]}"
        out[key] = value
    return {**out, "epoch": row["epoch"]}


def model_row(epoch: int, batch: int, kind: str, train: tuple, validation: dict) -> dict:
    """A row of the model's figures; `train` is (total, {target: loss}), `validation` an evaluation."""
    row = {"epoch": epoch, "batch": batch, "kind": kind, "train_loss": train[0]}
    row["validation_loss"] = validation["loss"]
    row.update({f"train_loss_{n}": v for n, v in train[1].items()})
    row.update({f"validation_loss_{n}": v for n, v in validation["losses"].items()})
    row.update({f"validation_accuracy_{n}": v for n, v in validation["accuracy"].items()})
    return row


def baseline_rows(baselines: dict) -> list:
    """The rows of the baselines ({baseline: evaluation} of sequifier.train.evaluation)."""
    return [
        {**model_row(0, 0, f"baseline_{kind}", (math.nan, {}), found), "train_loss": None}
        for kind, found in baselines.items()
    ]


def class_shares(counts, id_map: dict, top: int = 10) -> dict:
    """The `top` most predicted classes and their shares, named by their original values."""
    names = {index: value for value, index in id_map.items()}
    total = max(int(counts.sum()), 1)
    order = sorted(range(len(counts)), key=lambda i: -int(counts[i]))[:top]
    return {str(names.get(i, i)): int(counts[i]) / total for i in order}


def report_row(row: dict, validation: dict, id_maps: dict, tracker, step: int) -> None:
    """A metrics row to W&B (at optimizer step `step`) and the log, with the shares of the classes
    predicted (named by the id maps)."""
    logged = tracked(row)
    for name, found in validation["counts"].items():
        shares = class_shares(found, id_maps.get(name, {}))
        listed = ", ".join(f"{k}: {v:.3f}" for k, v in shares.items())
        log.info("predicted class shares of %s: %s", name, listed)
        logged.update({f"class_share/{name}/{value}": share for value, share in shares.items()})
    tracker.log(logged, step=step)
    trained = f"train loss {row['train_loss']:.5f}" if row["epoch"] else "untrained"
    found = f"validation loss {validation['loss']:.5f}{_accuracies(validation)}"
    log.info("epoch %d batch %d: %s, %s", row["epoch"], row["batch"], trained, found)


def report_baselines(baselines: dict, tracker) -> None:
    """The baselines of the validation split to the W&B summary and the log."""
    summary = {
        f"baseline/{kind}/{key}/{name}": value
        for kind, found in baselines.items()
        for key in ("losses", "accuracy")
        for name, value in found[key].items()
    }
    tracker.summary({**summary, **{f"baseline/{k}/loss": f["loss"] for k, f in baselines.items()}})
    best = baselines["best"]
    found = f"loss {best['loss']:.5f}{_accuracies(best)}"
    log.info("baselines on the validation split (best per target): %s", found)


def _accuracies(evaluation: dict) -> str:
    """ ", accuracy of {target} {value}" for each categorical target of an evaluation, for the log."""
    return "".join(f", accuracy of {n} {v:.4f}" for n, v in evaluation["accuracy"].items())
