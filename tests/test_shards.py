"""Streaming under DDP (torchrun, gloo, 2 processes): each rank reads only the files or row groups
of its share, the ranks together see the split's windows, and a resumed epoch is the same."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, sequences_table
from test_data import as_rows, plan_of

from sequifier.data.window_files import PAD
from sequifier.train.datasets import InMemoryWindows, StreamedWindows

CASES = [("parquet", False), ("parquet", True), ("pt", False)]


def small_row_groups(path: Path, windows: int, n_columns: int) -> None:
    """Rewrite a merged parquet file with row groups of `windows` windows (preprocess writes 8192)."""
    table = pq.read_table(path)
    pq.write_table(table, path, row_group_size=windows * n_columns)


def window_rows(found: list) -> list:
    return sorted(tuple(tuple(values) for values in row) for row in found)


@pytest.fixture
def streamed(project, request):
    fmt, merged = request.param
    project.write_data(sequences_table(n_sequences=60))
    plan = plan_of(project, write_format=fmt, merge_output=merged, batches_per_file=5, seq_length=6)
    if merged and fmt == "parquet":
        small_row_groups(plan.train_path, 23, len(plan.metadata.columns))
    return project, plan


def run_ranks(project, fmt, merged, out: Path) -> list:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [str(REPO / "tests" / "shard_ranks.py"), str(project.root), fmt, str(merged), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("streamed", CASES, indirect=True, ids=["parquet-files", "parquet-row-groups", "pt"])
def test_two_ranks_read_only_their_share_and_see_every_window(streamed, tmp_path):
    project, plan = streamed
    fmt = plan.metadata.write_format
    everything = as_rows(InMemoryWindows(plan.window_source(plan.train_path)).batches(64, shuffle=False))
    assert len(set(everything)) == len(everything) > 100  # distinct windows (real values)
    ranks = run_ranks(project, fmt, plan.train_path.is_file(), tmp_path)

    # the same number of batches on both ranks, as counted before the epoch
    assert ranks[0]["batch_count"] == ranks[1]["batch_count"] == ranks[0]["batches"][0] > 3
    assert all(rank["batches"] == rank["most_batches"] for rank in ranks)
    for epoch in ("epoch_one", "epoch_two"):
        seen = [row for rank in ranks for row in window_rows(rank[epoch])]
        assert len(seen) == len(set(seen)) == len(everything) - len(everything) % 2
        assert set(seen) <= set(everything)
    assert window_rows(ranks[0]["epoch_one"]) != window_rows(ranks[0]["epoch_two"])  # reshuffled
    assert sorted(row for rank in ranks for row in window_rows(rank["validation"])) == everything
    assert all(rank["resumed_equal"] for rank in ranks)  # skipping the batches done gives the rest

    # each rank reads its pieces: the two share at most the one piece where their ranges meet
    pieces = [{(name, group) for name, group, _, _ in rank["pieces"]} for rank in ranks]
    stored = sorted(p.name for p in plan.train_path.iterdir()) if plan.train_path.is_dir() else None
    groups = pq.ParquetFile(plan.train_path).metadata.num_row_groups if stored is None else None
    assert len(pieces[0] & pieces[1]) <= 1 and len(pieces[0] | pieces[1]) == len(stored or range(groups))
    assert (
        len(pieces[0]) < len(stored or range(groups)) - 1
        and len(pieces[1]) < len(stored or range(groups)) - 1
    )
    if ranks[0]["bytes_read"] >= 0:  # Linux: bytes read by the process, counted by the kernel
        assert all(0 < rank["bytes_read"] < 0.7 * rank["bytes_read_all"] for rank in ranks), ranks[0]


@pytest.mark.parametrize("streamed", [("csv", True), ("parquet", True)], indirect=True, ids=["csv", "ragged"])
def test_a_file_that_cannot_be_split_is_shared_by_window_ranges(streamed):
    """A csv file, or a parquet file whose row groups cut windows, is one piece: both ranks read it
    and keep their own range, so the shares stay exact."""
    project, plan = streamed
    n_columns = len(plan.metadata.columns)
    if plan.metadata.write_format == "parquet":
        pq.write_table(pq.read_table(plan.train_path), plan.train_path, row_group_size=7 * n_columns + 1)
    windows = StreamedWindows(plan.window_source(plan.train_path), 10)
    assert [piece.row_group for piece in windows.pieces] == [None]
    everything = as_rows(InMemoryWindows(plan.window_source(plan.train_path)).batches(64, shuffle=False))
    shares = [list(windows.batches(8, shuffle=True, seed=2, epoch=0, rank=r, world=2)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == windows.batch_count(8, shuffle=True, world=2)
    seen = [row for share in shares for row in as_rows(share)]
    assert len(set(seen)) == len(seen) == len(everything) - len(everything) % 2
    validation = [as_rows(windows.batches(8, shuffle=False, rank=r, world=2)) for r in (0, 1)]
    assert sorted(validation[0] + validation[1]) == everything
    assert sum(len(b[PAD]) for b in shares[0]) == len(everything) // 2


def test_streamed_training_on_two_ranks_resumes_to_the_uninterrupted_run(project):
    """Through the CLI: 2 epochs streamed on 2 ranks in one go, and 1 epoch then 1 more resumed
    from its checkpoint, end with the same validation loss."""
    project.write_data(sequences_table(n_sequences=60))
    project.preprocess(write_format="parquet", merge_output=False, batches_per_file=5, seq_length=6)
    project.write_train_config(epochs=2, batch_size=8, load_full_data_to_ram=False)

    def train(name, *settings):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        command += ["-m", "sequifier", "train", "--model-name", name]
        command += [item for setting in settings for item in ("--set", setting)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(
            command, cwd=project.root, capture_output=True, text=True, env=env, timeout=300
        )
        assert result.returncode == 0, result.stderr[-3000:]
        with open(project.root / "logs" / f"sequifier-{name}-metrics.csv") as handle:
            return [row for row in csv.DictReader(handle) if row["kind"] == "epoch"]

    whole = train("whole")
    train("parts", "training_spec.epochs=1")
    parts = train("parts", "training_spec.epochs=2", "training_spec.continue_training=true")
    assert [r["epoch"] for r in whole] == [r["epoch"] for r in parts] == ["0", "1", "2"]
    assert [r["validation_loss"] for r in parts] == [r["validation_loss"] for r in whole]
    assert [r["train_loss"] for r in parts[1:]] == [r["train_loss"] for r in whole[1:]]
