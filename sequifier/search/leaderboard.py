"""The runs of a search ranked: best validation loss (total and per target) next to the best
baseline of the validation split, accuracy, epochs, wall time and size of each run, read from the
files its training wrote; a run without them is marked failed, one whose validation loss was never
a number diverged. The best epoch is a trained one (epoch 0, the untrained model, only starts the
curves).
And the look of it: validation loss per epoch of every run, in one plot (PNG)."""

import csv
import math
from pathlib import Path

from sequifier.files import atomic_path

FIXED = [
    "rank", "run", "status", "best_validation_loss", "baseline_loss",
    "best_epoch", "epochs", "wall_s", "parameters",
]  # fmt: skip


def parameter_count(models: Path, name: str) -> int | None:
    """Weights of the run's best exported model (pt bundle, read safely), or None without one."""
    from sequifier.model.export import find_export, read_bundle

    path = find_export(models, name)
    if path is None:
        return None
    return sum(tensor.numel() for tensor in read_bundle(path)["state_dict"].values())


def metric_rows(metrics_path: Path) -> list[dict]:
    """The rows of a metrics CSV; none when it is missing or empty."""
    if not metrics_path.is_file() or metrics_path.stat().st_size == 0:
        return []
    with open(metrics_path) as handle:
        return list(csv.DictReader(handle))


def epochs_of(rows: list[dict]) -> list[dict]:
    """The rows of the model after each epoch, from epoch 0 (untrained)."""
    return [row for row in rows if row["kind"] == "epoch"]


def baseline(rows: list[dict]) -> dict:
    """The best baseline of the run's validation split: baseline_loss, baseline_loss_{target} and
    baseline_accuracy_{target}, from the rows of its metrics CSV."""
    best = next((row for row in rows if row["kind"] == "baseline_best"), None)
    if best is None:
        return {}
    found = {"baseline_loss": float(best["validation_loss"])}
    for key, value in best.items():
        if key.startswith(("validation_loss_", "validation_accuracy_")) and value:
            found[f"baseline_{key[len('validation_') :]}"] = float(value)
    return found


def run_result(name: str, metrics_path: Path, models: Path) -> dict:
    """One row of the leaderboard from the run's metrics CSV (trained epochs) and its best model."""
    found = metric_rows(metrics_path)
    rows = [row for row in epochs_of(found) if int(row["epoch"]) > 0]
    if not rows:
        return {"run": name, "status": "failed"}
    losses = [float(row["validation_loss"]) for row in rows]
    if not any(math.isfinite(loss) for loss in losses):  # trained, but to no number: not rankable
        return {"run": name, "status": "diverged", "epochs": int(rows[-1]["epoch"])}
    best = rows[min(range(len(rows)), key=lambda i: losses[i] if math.isfinite(losses[i]) else math.inf)]
    baselines, per_target = baseline(found), {}
    targets = [key[len("validation_loss_") :] for key in best if key.startswith("validation_loss_")]
    for figure in (f"{kind}_{target}" for target in targets for kind in ("loss", "accuracy")):
        if best.get(f"validation_{figure}"):  # per target: the model's, then the baseline's
            per_target[f"best_validation_{figure}"] = float(best[f"validation_{figure}"])
            per_target[f"baseline_{figure}"] = baselines.get(f"baseline_{figure}", "")
    return {
        "run": name,
        "status": "done",
        "best_validation_loss": float(best["validation_loss"]),
        "best_epoch": int(best["epoch"]),
        "epochs": int(rows[-1]["epoch"]),
        "wall_s": round(float(rows[-1]["elapsed_s"]), 1),
        "parameters": parameter_count(models, name),
        "baseline_loss": baselines.get("baseline_loss", ""),
        **per_target,
    }


def outcome_row(name: str, status: dict | None, metrics_path: Path, models: Path) -> dict:
    """A run's row from the status its lifecycle recorded (None: none) and, when it is done, its
    metrics CSV and models; wall_s is the whole run's."""
    if status is None or status["status"] != "done":
        return {"run": name, "status": status["status"] if status else "incomplete"}
    return {**run_result(name, metrics_path, models), "wall_s": status["wall_s"]}


def ranked(results: list[dict], table: list[dict]) -> list[dict]:
    """Finished runs by best validation loss, then the others (failed, diverged); each with its
    point (its row of runs.csv, `table`)."""
    points = {row["run"]: {key: value for key, value in row.items() if key != "run"} for row in table}
    done = sorted((r for r in results if r["status"] == "done"), key=lambda r: r["best_validation_loss"])
    failed = [r for r in results if r["status"] != "done"]
    rows = []
    for rank, result in enumerate(done + failed, start=1):
        rows.append({"rank": rank if result["status"] == "done" else "", **result, **points[result["run"]]})
    return rows


def write_table(path: Path, rows: list[dict], first: tuple = ()) -> None:
    """Rows as a CSV file, written atomically; the columns `first`, then all others in order."""
    columns = list(first)
    for row in rows:
        columns += [key for key in row if key not in columns]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def write_leaderboard(path: Path, rows: list[dict]) -> None:
    write_table(path, rows, FIXED)


def plot_curves(path: Path, metrics: dict, title: str) -> None:
    """Validation loss per epoch of every run with metrics ({run: metrics CSV}), from epoch 0 (the
    untrained model), and the best baseline as a dashed line, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axes = plt.subplots(figsize=(8, 5))
    baselines = []
    for name, metrics_path in metrics.items():
        found = metric_rows(metrics_path)
        rows = epochs_of(found)
        if rows:
            epochs = [int(row["epoch"]) for row in rows]
            axes.plot(epochs, [float(row["validation_loss"]) for row in rows], marker="o", label=name)
            baselines.append(baseline(found).get("baseline_loss"))
    if baselines and baselines[0] is not None:
        axes.axhline(baselines[0], color="gray", linestyle="--", label="best baseline")
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend(fontsize=7)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
