"""The runs of a search ranked: best validation loss (total and per target), epochs, wall time and
size of each run, read from the files its training wrote; a run without them is marked failed."""

import csv
import math
from pathlib import Path

from sequifier.files import atomic_path

FIXED = ["rank", "run", "status", "best_validation_loss", "best_epoch", "epochs", "wall_s", "parameters"]


def parameter_count(models: Path, name: str) -> int | None:
    """Weights of the run's best exported model (pt bundle), or None without one."""
    import torch

    found = sorted(models.glob(f"sequifier-{name}-best-[0-9]*.pt"))
    if not found:
        return None
    bundle = torch.load(found[-1], map_location="cpu", weights_only=False)
    return sum(tensor.numel() for tensor in bundle["state_dict"].values())


def run_result(name: str, metrics_path: Path, models: Path) -> dict:
    """One row of the leaderboard from the run's metrics CSV (epoch rows) and its best model."""
    if not metrics_path.is_file():
        return {"run": name, "status": "failed"}
    with open(metrics_path) as handle:
        rows = [row for row in csv.DictReader(handle) if row["kind"] == "epoch"]
    if not rows:
        return {"run": name, "status": "failed"}
    losses = [float(row["validation_loss"]) for row in rows]
    best = rows[min(range(len(rows)), key=lambda i: losses[i] if math.isfinite(losses[i]) else math.inf)]
    per_target = {key: float(value) for key, value in best.items() if key.startswith("validation_loss_")}
    return {
        "run": name,
        "status": "done",
        "best_validation_loss": float(best["validation_loss"]),
        "best_epoch": int(best["epoch"]),
        "epochs": int(rows[-1]["epoch"]),
        "wall_s": round(float(rows[-1]["elapsed_s"]), 1),
        "parameters": parameter_count(models, name),
        **{f"best_{key}": value for key, value in per_target.items()},
    }


def ranked(results: list[dict], points: dict) -> list[dict]:
    """Finished runs by best validation loss, then the failed ones; each with its point."""
    done = sorted((r for r in results if r["status"] == "done"), key=lambda r: r["best_validation_loss"])
    failed = [r for r in results if r["status"] != "done"]
    rows = []
    for rank, result in enumerate(done + failed, start=1):
        rows.append({"rank": rank if result["status"] == "done" else "", **result, **points[result["run"]]})
    return rows


def write_leaderboard(path: Path, rows: list[dict]) -> None:
    columns = list(FIXED)
    for row in rows:
        columns += [key for key in row if key not in columns]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
