#!/usr/bin/env python
"""Benchmark the cost of k-step targets: windows/s of training with target_offset 3 against 1.

    python benchmarks/target_offset.py [--repeats 3] [--epochs 1] [--out DIR]

One data set (an order-2 Markov chain, as train.py's), preprocessed once; both settings train the
same model on the same windows with the same seq_length (the longest a target_offset of 3 allows),
so that the offset is the only difference. The runs alternate; the table gives the medians and the
ratio to target_offset 1 measured in the same run. Nothing here asserts a timing.
"""

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tools import (  # noqa: E402
    ENV,
    HERE,
    OURS,
    SEQ_LENGTH,
    SPEED_MODEL,
    SYMBOLS,
    markov_chain,
    our_preprocess,
    our_train_config,
    sample_chain,
    set_flags,
    write_long,
)

OFFSETS = (1, 3)


def train(root: Path, config: Path, offset: int, log: Path) -> dict:
    """One whole `sequifier train`; its epochs' windows/s and final validation loss, from its metrics."""
    name = f"k{offset}"
    shutil.rmtree(root / "checkpoints", ignore_errors=True)  # never resume
    cmd = [OURS, "train", "--config-path", str(config), "--model-name", name]
    with open(log, "w") as handle:
        env = {**os.environ, **ENV}
        subprocess.run(
            [*cmd, *set_flags({"target_offset": offset})], stdout=handle, stderr=handle, env=env, check=True
        )
    metrics = (root / "logs" / f"sequifier-{name}-metrics.csv").read_text().splitlines()
    epochs = [row for row in csv.DictReader(metrics) if row["kind"] == "epoch" and int(row["epoch"]) > 0]
    return {
        "rate": statistics.mean(float(row["windows_per_s"]) for row in epochs),
        "final": float(epochs[-1]["validation_loss"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--sequences", type=int, default=400)
    parser.add_argument("--out", default=str(HERE / "out"))
    args = parser.parse_args()
    out = Path(args.out)
    work = out / "target-offset"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    chain = markov_chain(SYMBOLS, 1.0, seed=11)
    data = write_long(work / "chain.csv", {"itemId": sample_chain(chain, args.sequences, 200, seed=12)})
    our_preprocess(work, data, out / "logs" / "target-offset-preprocess.log", n_cores=2)
    training = {"epochs": args.epochs, "batch_size": 128, "learning_rate": 0.001}
    config = our_train_config(
        work, data.stem, SPEED_MODEL, training, seq_length=SEQ_LENGTH + 1 - max(OFFSETS)
    )
    results = {k: [] for k in OFFSETS}
    for rep in range(args.repeats):
        for k in OFFSETS:
            log = out / "logs" / f"target-offset-{k}-{rep}.log"
            r = train(work, config, k, log)
            results[k].append(r)
            print(
                f"  run {rep + 1}/{args.repeats} target_offset {k}: {r['rate']:6.0f} windows/s, "
                f"final validation loss {r['final']:.4f}",
                flush=True,
            )
    base = statistics.median(r["rate"] for r in results[1])
    print("\n| target_offset | windows/s | / target_offset 1 | final val loss |")
    print("|---|---|---|---|")
    for k, runs in results.items():
        rate = statistics.median(r["rate"] for r in runs)
        final = statistics.median(r["final"] for r in runs)
        print(f"| {k} | {rate:,.0f} | {rate / base:.2f} | {final:.4f} |")


if __name__ == "__main__":
    main()
