"""Run by torchrun in tests/test_shards.py: each rank streams its share of a window folder or file
and writes what it saw to OUT/rank-R.json: the windows of two epochs and of a resumed epoch 1,
the pieces it read in epoch 2, the bytes it read then and reading every window instead (Linux
/proc/self/io rchar), and its batch counts.

    torchrun --standalone --nproc_per_node=2 tests/shard_ranks.py PROJECT_ROOT FORMAT MERGED OUT
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from sequifier import config
from sequifier.data.window_files import PAD
from sequifier.train import distributed
from sequifier.train.datasets import StreamedWindows
from sequifier.train.plan import make_train_plan

BATCH, SEED = 8, 5


def rows(batches) -> list:
    found = []
    for batch in batches:
        keys = sorted(batch)
        found += [[batch[k][i].reshape(-1).tolist() for k in keys] for i in range(len(batch[PAD]))]
    return found


def bytes_read() -> int:
    io = Path("/proc/self/io")
    if not io.exists():
        return -1
    return int(next(line for line in io.read_text().splitlines() if line.startswith("rchar:")).split()[1])


def main(root: str, fmt: str, merged: str, out: str) -> None:
    process = distributed.start("cpu", "test")
    train = {"project_root": root, "metadata_config_path": "configs/metadata_configs/table.json"}
    plan = make_train_plan(config.resolve("train", train, "test config"))
    windows = StreamedWindows(plan.window_source(plan.train_path), buffer_size=10, readahead=1)
    share = dict(rank=process.rank, world=process.world)
    count = windows.batch_count(BATCH, shuffle=True, **share)
    epoch_one = list(windows.batches(BATCH, shuffle=True, seed=SEED, epoch=1, **share))
    before = bytes_read()  # after a first epoch: the modules it imported are read by now
    epoch_two = list(windows.batches(BATCH, shuffle=True, seed=SEED, epoch=2, **share))
    read = bytes_read() - before
    pieces = [[p.piece.file.name, p.piece.row_group, p.start, p.stop] for p in windows.read]
    before = bytes_read()  # what one process reading every window (as each rank did before) reads
    list(windows.batches(BATCH, shuffle=True, seed=SEED, epoch=2))
    read_all = bytes_read() - before
    resumed = list(windows.batches(BATCH, shuffle=True, seed=SEED, epoch=1, skip=3, **share))
    validation = list(windows.batches(BATCH, shuffle=False, **share))
    counts = torch.tensor([len(epoch_one), len(epoch_two)])
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)  # the ranks meet here: each has its batches
    result = {
        "batch_count": count,
        "batches": [len(epoch_one), len(epoch_two)],
        "most_batches": counts.tolist(),
        "epoch_one": rows(epoch_one),
        "epoch_two": rows(epoch_two),
        "resumed_equal": all(torch.equal(a[PAD], b[PAD]) and all(torch.equal(a[k], b[k]) for k in a)
                             for a, b in zip(epoch_one[3:], resumed)) and len(resumed) == len(epoch_one) - 3,
        "validation": rows(validation),
        "pieces": pieces,
        "bytes_read": read,
        "bytes_read_all": read_all,
        "total": len(windows),
    }  # fmt: skip
    Path(out, f"rank-{process.rank}.json").write_text(json.dumps(result))
    distributed.stop(process)


if __name__ == "__main__":
    main(*sys.argv[1:])
