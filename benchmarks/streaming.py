#!/usr/bin/env python
"""Benchmark streamed training data under DDP: what each of 2 ranks reads in an epoch.

    python benchmarks/streaming.py [--sequences 2000] [--out DIR]

For each layout of the training split (a folder of parquet shards, one merged parquet file of
8192-window row groups, a folder of pt shards, one merged csv file) it launches
`torchrun --standalone --nproc_per_node=2` on this script (`--rank` mode, gloo, CPU). Each rank
streams one epoch of its share after a warm-up epoch and counts the bytes its process read
(Linux /proc/self/io rchar) and the pieces (row groups or files) it opened; then it streams one
epoch reading every window, as each rank did before ranks read only their share ("before").
Nothing here asserts a figure: the script prints a table. See README.md ("streaming").
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess import print_table  # noqa: E402
from tools import HERE, markov_chain, our_preprocess, sample_chain, write_long  # noqa: E402

BATCH, SEED = 256, 7
LAYOUTS = {  # name: preprocess settings
    "parquet folder": {"write_format": "parquet", "merge_output": False, "batches_per_file": 4096},
    "parquet file": {"write_format": "parquet", "merge_output": True},
    "pt folder": {"write_format": "pt", "merge_output": False, "batches_per_file": 4096},
    "csv file": {"write_format": "csv", "merge_output": True},
}


def rchar() -> int:
    text = Path("/proc/self/io").read_text()
    return int(next(line for line in text.splitlines() if line.startswith("rchar:")).split()[1])


def rank_run(root: str, out: str) -> None:
    """One rank (under torchrun): an epoch of its share, then one of every window, measured."""
    from sequifier import config
    from sequifier.train import distributed
    from sequifier.train.datasets import StreamedWindows
    from sequifier.train.plan import make_train_plan

    process = distributed.start("cpu", "benchmark")
    name = next(Path(root, "configs", "metadata_configs").glob("*.json")).name
    train = {"project_root": root, "metadata_config_path": f"configs/metadata_configs/{name}"}
    plan = make_train_plan(config.resolve("train", train, "benchmark config"))
    windows = StreamedWindows(plan.window_source(plan.train_path), buffer_size=65536)
    share = {"rank": process.rank, "world": process.world}
    for _ in windows.batches(BATCH, shuffle=True, seed=SEED, epoch=0, **share):  # warm-up: imports
        pass
    figures = {}
    for label, split in (("after", share), ("before", {"rank": 0, "world": 1})):
        start, windows_seen = rchar(), 0
        for batch in windows.batches(BATCH, shuffle=True, seed=SEED, epoch=1, **split):
            windows_seen += len(batch["n_pad"])
        figures[label] = {
            "bytes": rchar() - start,
            "pieces": len(windows.read),
            "windows": windows_seen,
            "stored": sum(part.piece.stored_bytes for part in windows.read),
        }
    figures["total_pieces"] = len(windows.pieces)
    Path(out, f"rank-{process.rank}.json").write_text(json.dumps(figures))
    distributed.stop(process)


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=2000, help="sequences of 200 items")
    parser.add_argument("--out", default=str(HERE / "out"))
    parser.add_argument("--rank", nargs=2, metavar=("ROOT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank:
        return rank_run(*args.rank)
    out = Path(args.out) / "streaming"
    chain = markov_chain(50, 0.1, seed=21)
    data = write_long(
        out / f"markov-{args.sequences}.csv", {"itemId": sample_chain(chain, args.sequences, 200, 22)}
    )
    (out / "logs").mkdir(parents=True, exist_ok=True)
    rows = []
    for layout, settings in LAYOUTS.items():
        root = out / layout.replace(" ", "-")
        our_preprocess(root, data, out / "logs" / f"{root.name}-preprocess.log", **settings)
        results = root / "rank-results"
        results.mkdir(exist_ok=True)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        command += [__file__, "--rank", str(root), str(results)]
        subprocess.run(
            command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
        )
        for r in range(2):
            found = json.loads((results / f"rank-{r}.json").read_text())
            before, after = found["before"], found["after"]
            rows.append(
                [
                    layout, r, f"{after['windows']:,}",
                    f"{before['pieces']} / {found['total_pieces']}", mib(before["bytes"]),
                    f"{after['pieces']} / {found['total_pieces']}", mib(after["bytes"]),
                    f"{after['bytes'] / before['bytes']:.2f}",
                ]
            )  # fmt: skip
    print(f"\n== bytes read per rank in one epoch, 2 ranks ({data.name}, seq_length 32, stride 4)")
    header = [
        "layout",
        "rank",
        "windows",
        "pieces before",
        "MiB before",
        "pieces after",
        "MiB after",
        "ratio",
    ]
    print_table(header, rows)


if __name__ == "__main__":
    main()
