#!/usr/bin/env python
"""Benchmark what each training option of issue 09 costs: windows/s of the same model on the same
windows with one option changed, against plain causal training measured in the same run.

    python benchmarks/options.py [--repeats 3] [--epochs 1] [--sequences 1000] [--out DIR]

Data: an order-2 Markov chain over 50 symbols (`itemId`, as train.py's) and a real column `y`
that follows the item before it (y = 0.1 x that item's id + N(0, 1.5)). The model (train.py's
speed model: dim 64, 2 layers) reads both and predicts both; every run is a whole `sequifier
train` process, and the options take turns in every repeat, so that a machine busy in part of the
run weighs on all of them. windows/s is the training loop's (validation not included), read from
the run's metrics. The table gives medians over the repeats, the ratio to plain causal training,
the final validation loss (not comparable across objectives and criteria: each has its own loss)
and, for GaussianNLLLoss, the median predicted standard deviation of y on the data's scale (the
noise is 1.5). Nothing here asserts a timing.
"""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tools as bench  # noqa: E402  (data, configs and runs shared by the benchmarks)
from preprocess import print_table  # noqa: E402

SIGMA = 1.5
OPTIONS = {  # name: the settings that differ from plain causal training
    "causal (baseline)": {},
    "target_offset: 3": {"target_offset": 3},
    "objective: masked": {"objective": "masked"},
    "y: GaussianNLLLoss": {"training_spec.criterion": {"itemId": "CrossEntropyLoss", "y": "GaussianNLLLoss"}},
    "freeze: [blocks]": {"training_spec.freeze": ["blocks"]},
    "freeze: [encoders, blocks]": {"training_spec.freeze": ["encoders", "blocks"]},
}


def chain_with_values(path: Path, sequences: int, length: int) -> Path:
    items = bench.sample_chain(bench.markov_chain(bench.SYMBOLS, 1.0, seed=11), sequences, length, seed=12)
    noise = np.random.default_rng(13).normal(0.0, SIGMA, items.shape)
    y = np.concatenate([np.zeros((sequences, 1)), 0.1 * items[:, :-1]], 1) + noise
    return bench.write_long(path, {"itemId": items, "y": y})


def predicted_std(root: Path, model: Path, log: Path) -> float:
    out = root / "outputs-std"
    cmd = [bench.OURS, "infer", "--project-root", str(root), "--model-path", str(model)]
    cmd += ["--output-path", str(out), "--config-path", str(root / "configs" / "infer.yaml")]
    with log.open("w") as handle:
        subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, check=True)
    (found,) = out.glob("predictions/*.csv")
    return float(pd.read_csv(found)["y_std"].median())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--sequences", type=int, default=1000)
    parser.add_argument("--out", default=str(bench.HERE / "out"))
    args = parser.parse_args()
    out = Path(args.out)
    root, logs = out / "options", out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data = chain_with_values(root / "chain-values.csv", args.sequences, 200)
    bench.our_preprocess(root, data, logs / "options-preprocess.log", n_cores=2)
    (root / "configs" / "infer.yaml").write_text(f"project_root: {root}\n")
    longest = bench.SEQ_LENGTH + 1 - 3  # the longest seq_length a target_offset of 3 allows, for all
    config = bench.our_train_config(
        root, data.stem, bench.SPEED_MODEL, bench.speed_training(args), seq_length=longest,
        input_columns=["itemId", "y"], target_columns=["itemId", "y"],
    )  # fmt: skip
    results = {name: [] for name in OPTIONS}
    for rep in range(args.repeats):
        for number, (name, settings) in enumerate(OPTIONS.items()):
            r = bench.run_ours(
                root, config, f"option{number}", settings, logs / f"options-{number}-{rep}.log"
            )
            results[name].append(r)
            rate, final = r["rate"], r["final"]
            print(f"  run {rep + 1}/{args.repeats} {name:27s}: {rate:7.0f} windows/s, final {final:.4f}")
    base = statistics.median(r["rate"] for r in results["causal (baseline)"])
    rows = []
    for name, runs in results.items():
        rate = statistics.median(r["rate"] for r in runs)
        std = "-"
        if "GaussianNLLLoss" in name:
            std = f"{predicted_std(root, runs[-1]['models'][0], logs / 'options-infer.log'):.3f}"
        final = statistics.median(r["final"] for r in runs)
        rows.append([name, f"{rate:,.0f}", f"{rate / base:.2f}", f"{final:.4f}", std])
    print(f"\ntrain {args.epochs} epoch(s), dim 64, 2 layers, CPU; medians of {args.repeats} whole processes")
    print_table(["option", "windows/s", "vs causal", "final val loss", f"median y std (noise {SIGMA})"], rows)


if __name__ == "__main__":
    main()
