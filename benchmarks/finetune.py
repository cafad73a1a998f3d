"""Fine-tuning against training from scratch on a small data set, with and without frozen blocks.

A model pretrained on a large data set of an order-2 Markov chain is fine-tuned on a small data set
of a related chain (each row of the first mixed with a fresh Dirichlet row), with its blocks frozen
(`training_spec.freeze: [blocks]`) and without; the same epochs from scratch are the baseline. Every
run is a whole `sequifier train` process; see benchmarks/README.md. What freezing saves per window
is measured by options.py.

    python benchmarks/finetune.py            # ~2 min on 2 idle cores
"""

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from tools import ENV, HERE, OURS, entropy_rate, markov_chain, our_preprocess, our_train_config, sample_chain
from tools import write_long as write_table

SYMBOLS = 20
MODEL = {"dim_model": 64, "n_head": 4, "dim_feedforward": 128, "num_layers": 2}
TRAINING = {"batch_size": 64, "learning_rate": 0.003, "gradient_clip": 1.0}


def related(chain: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Each row of `chain` mixed with a fresh Dirichlet(0.2) row, `share` of the latter."""
    fresh = markov_chain(chain.shape[0], 0.2, seed)
    return (1 - share) * chain + share * fresh


def project(root: Path, chain: np.ndarray, sequences: int, seed: int) -> Path:
    data = write_table(
        root / "input" / "chain.parquet", {"itemId": sample_chain(chain, sequences, 100, seed)}
    )
    our_preprocess(root, data, root / "preprocess.log", stride_by_split=[4, 4, 4])
    return our_train_config(root, "chain", MODEL, TRAINING, input_columns=["itemId"])


def train(root: Path, config: Path, name: str, **settings) -> list:
    """One `sequifier train`; its epoch rows of the metrics CSV (epoch 0, the untrained, included)."""
    flags = [a for key, value in settings.items() for a in ("--set", f"{key}={json.dumps(value)}")]
    command = [OURS, "train", "--config-path", str(config), "--model-name", name, *flags]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **ENV})
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    with open(root / "logs" / f"sequifier-{name}-metrics.csv") as handle:
        return [row for row in csv.DictReader(handle) if row["kind"] == "epoch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "out" / "finetune")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each run on the small data set")
    parser.add_argument("--large", type=int, default=400, help="sequences of the large data set (100 items)")
    parser.add_argument("--small", type=int, default=40, help="sequences of the small data set (100 items)")
    parser.add_argument("--share", type=float, default=0.3, help="how far the small data set's chain is")
    args = parser.parse_args()
    base_chain = markov_chain(SYMBOLS, 0.2, seed=11)
    small_chain = related(base_chain, args.share, seed=12)
    large = project(args.out / "large", base_chain, args.large, seed=13)
    small = project(args.out / "small", small_chain, args.small, seed=14)
    rates = entropy_rate(base_chain), entropy_rate(small_chain)
    print(f"entropy rate: large chain {rates[0]:.3f}, small chain {rates[1]:.3f}")

    pretrained_rows = train(args.out / "large", large, "pretrained", **{"training_spec.epochs": 3})
    pretrained = next((args.out / "large" / "models").glob("sequifier-pretrained-last-*.pt"))
    print(f"pretrained: validation loss {float(pretrained_rows[-1]['validation_loss']):.4f} (large data set)")
    epochs = {"training_spec.epochs": args.epochs}
    runs = {
        "from scratch": {},
        "fine-tuned, all weights": {"init_from": str(pretrained)},
        "fine-tuned, blocks frozen": {"init_from": str(pretrained), "training_spec.freeze": ["blocks"]},
    }
    losses = {}
    for label, settings in runs.items():
        rows = train(
            args.out / "small", small, label.replace(" ", "").replace(",", "-"), **epochs, **settings
        )
        losses[label] = [float(row["validation_loss"]) for row in rows]
    scratch = losses["from scratch"][-1]
    print(f"\n| small data set ({args.small} x 100 items) | validation loss, epoch 0 | "
          f"after {args.epochs} epochs | against scratch |")  # fmt: skip
    print("|---|---|---|---|")
    for label, curve in losses.items():
        print(f"| {label} | {curve[0]:.4f} | {curve[-1]:.4f} | {curve[-1] / scratch:.3f} |")


if __name__ == "__main__":
    main()
