#!/usr/bin/env python
"""Benchmark `objective: masked` against causal training on the chain of the fill-in test
(tests/test_masked_fill_in.py: an item at an odd itemPosition tells the parities of both its
neighbours): the accuracy of filling in such a middle item, and the training windows/s of each
objective, measured in the same run.

    python benchmarks/masked.py [--sequences 400] [--repeats 2] [--epochs 12] [--out DIR]

The two objectives train in turns (causal, masked, masked, causal, ...) and the windows/s are the
median of the repeats, so that a machine busy with other work in part of the run weighs on both.
"""

import argparse
import csv
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from conftest import Project  # noqa: E402
from test_masked_fill_in import chain_project, fill_in_accuracy  # noqa: E402


def windows_per_second(project: Project, objective: str) -> float:
    """The mean training windows/s of a run's epochs (from its metrics)."""
    with open(project.root / "logs" / f"sequifier-{objective}-metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row["kind"] == "epoch" and row["epoch"] != "0"]
    return statistics.mean(float(row["windows_per_s"]) for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=12, help="of each training (the test trains 4)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="sequifier-masked-"))
    project = Project(root / "chain")
    chain_project(project, args.sequences)
    accuracy, rates = {}, {"causal": [], "masked": []}
    for repeat in range(args.repeats):
        for objective in ("causal", "masked")[:: 1 if repeat % 2 == 0 else -1]:
            accuracy[objective] = fill_in_accuracy(project, objective, args.epochs)  # seeded: alike each time
            rates[objective].append(windows_per_second(project, objective))
    found = {name: (accuracy[name], statistics.median(rates[name])) for name in rates}
    base = found["causal"][1]
    print("| objective | fill-in accuracy (odd items) | windows/s | / causal |")
    print("|---|---|---|---|")
    for objective, (accuracy, rate) in found.items():
        print(f"| {objective} | {accuracy:.3f} | {rate:,.0f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
