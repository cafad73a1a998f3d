#!/usr/bin/env python
"""Benchmark the cost of `criterion: GaussianNLLLoss` for a real target against MSELoss: training
windows/s of the same model on the same data, in the same run, taking turns.

    python benchmarks/criteria.py [--repeats 3] [--epochs 2] [--out DIR]

Data: x ~ N(0, 1) per item, y of the next item = 3 x + 10 + N(0, 1.5); the model reads x and y
and predicts y. Every training run is a whole `sequifier train` process; windows/s is read from
the metrics it writes (its training loop, validation not included). The table also gives the
final validation loss and, for GaussianNLLLoss, the median predicted standard deviation on the
data's scale (the noise is 1.5). See README.md ("criteria.py").
"""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess import print_table  # noqa: E402
from tools import HERE, OURS, SPEED_MODEL, our_preprocess, our_train_config, run_ours, write_long  # noqa: E402

SIGMA = 1.5


def noisy_data(path: Path, n: int, length: int) -> Path:
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 1.0, (n, length))
    y = np.concatenate([np.full((n, 1), 10.0), 3 * x[:, :-1] + 10 + rng.normal(0, SIGMA, (n, length - 1))], 1)
    return write_long(path, {"x": x, "y": y})


def predicted_std(root: Path, model: Path, log: Path) -> float:
    out = root / "outputs-std"
    cmd = [OURS, "infer", "--project-root", str(root), "--model-path", str(model), "--output-path", str(out)]
    cmd += ["--config-path", str(root / "configs" / "infer.yaml")]
    with log.open("w") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True)
    (found,) = out.glob("predictions/*.csv")
    return float(pd.read_csv(found)["y_std"].median())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--sequences", type=int, default=1000)
    parser.add_argument("--out", default=str(HERE / "out"))
    args = parser.parse_args()
    out = Path(args.out)
    work, logs = out / "criteria", out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data = noisy_data(work / "noisy.csv", args.sequences, 100)
    root = work / "ours"
    our_preprocess(root, data, logs / "criteria-preprocess.log", n_cores=2)
    (root / "configs" / "infer.yaml").write_text(f"project_root: {root}\n")
    training = {
        "epochs": args.epochs,
        "batch_size": 128,
        "learning_rate": 0.001,
        "optimizer": {"name": "AdamW"},
        "dropout": 0.0,
    }
    config = our_train_config(
        root, data.stem, SPEED_MODEL, training, input_columns=["x", "y"], target_columns=["y"]
    )
    losses = {"MSELoss": "mse", "GaussianNLLLoss": "gauss"}
    results = {loss: [] for loss in losses}
    for rep in range(args.repeats):
        for loss, name in losses.items():  # taking turns
            r = run_ours(
                root,
                config,
                name,
                {"training_spec.criterion": {"y": loss}},
                logs / f"criteria-{name}-{rep}.log",
            )
            results[loss].append(r)
            print(
                f"  run {rep + 1}/{args.repeats} {loss:16s}: {r['rate']:7.0f} windows/s, "
                f"final loss {r['final']:.4f}"
            )
    base = statistics.median(r["rate"] for r in results["MSELoss"])
    rows = []
    for loss, runs in results.items():
        rate = statistics.median(r["rate"] for r in runs)
        std = "-"
        if loss == "GaussianNLLLoss":
            std = f"{predicted_std(root, runs[-1]['models'][0], logs / 'criteria-infer.log'):.3f}"
        final = statistics.median(r["final"] for r in runs)
        rows.append([loss, f"{rate:,.0f}", f"{rate / base:.2f}", f"{final:.4f}", std])
    print(f"\ntrain {args.epochs} epochs, dim 64, 2 layers, CPU; medians of {args.repeats} whole processes")
    print_table(
        ["criterion of y", "windows/s", "vs MSELoss", "final val loss", f"median std (noise {SIGMA})"], rows
    )


if __name__ == "__main__":
    main()
