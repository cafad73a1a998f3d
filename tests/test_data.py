"""Training windows: every file format reads the same, streaming sees what memory sees, ranks share fairly."""

import pytest
import torch
from conftest import sequences_table

from sequifier import config
from sequifier.data.window_files import PAD, SPLIT_START
from sequifier.train.datasets import InMemoryWindows, StreamedWindows
from sequifier.train.plan import make_train_plan


def plan_of(project, **preprocess):
    project.preprocess(**preprocess)
    train = {"project_root": str(project.root), "metadata_config_path": "configs/metadata_configs/table.json"}
    return make_train_plan(config.resolve("train", train, "test config"))


def as_rows(batches) -> list:
    """Every window of the batches as a tuple of its values, sorted (order-free comparison)."""
    rows = []
    for batch in batches:
        keys = sorted(batch)
        for i in range(len(batch[PAD])):
            rows.append(tuple(tuple(batch[k][i].reshape(-1).tolist()) for k in keys))
    return sorted(rows)


@pytest.fixture
def windows_by_format(project):
    project.write_data(sequences_table(n_sequences=40))
    found = {}
    for fmt, merged in (("parquet", True), ("csv", True), ("pt", False), ("parquet", False)):
        plan = plan_of(project, write_format=fmt, merge_output=merged, batches_per_file=7, seq_length=6)
        found[(fmt, merged)] = (plan, InMemoryWindows(plan.window_source(plan.train_path)))
    return found


def test_every_format_gives_the_same_windows(windows_by_format):
    (plan, reference), *others = windows_by_format.values()
    assert set(reference.tensors) == {PAD, SPLIT_START, "item", "code", "price"}
    assert (
        reference.tensors["item"].dtype == torch.int32 and reference.tensors["price"].dtype == torch.float32
    )
    assert len(reference) == plan.metadata.n_windows["train"]
    for _, windows in others:
        assert windows.tensors.keys() == reference.tensors.keys()
        for key, tensor in reference.tensors.items():
            torch.testing.assert_close(windows.tensors[key], tensor)


def test_padding_is_counted_from_the_left(windows_by_format):
    _, windows = windows_by_format[("parquet", True)]
    pad, item = windows.tensors[PAD], windows.tensors["item"]
    assert pad.max() > 0  # sequences shorter than a window exist
    for i in range(len(pad)):
        assert (item[i, : pad[i]] == 0).all() and (item[i, pad[i] :] > 0).all()


def test_streaming_gives_every_window_once_per_epoch(windows_by_format):
    plan, in_memory = windows_by_format[("parquet", False)]
    streamed = StreamedWindows(plan.window_source(plan.train_path), buffer_size=10, readahead=2)
    assert len(list(plan.train_path.iterdir())) > 3 and len(streamed) == len(in_memory)
    everything = as_rows(in_memory.batches(16, shuffle=False))
    epoch_one = list(streamed.batches(16, shuffle=True, seed=3, epoch=1))
    assert as_rows(epoch_one) == everything
    assert [len(b[PAD]) for b in epoch_one[:-1]] == [16] * (len(epoch_one) - 1)
    epoch_two = list(streamed.batches(16, shuffle=True, seed=3, epoch=2))
    assert as_rows(epoch_two) == everything
    assert not torch.equal(epoch_one[0]["item"], epoch_two[0]["item"])  # shuffled anew each epoch
    again = list(streamed.batches(16, shuffle=True, seed=3, epoch=1))
    assert all(torch.equal(a["item"], b["item"]) for a, b in zip(epoch_one, again))
    resumed = list(streamed.batches(16, shuffle=True, seed=3, epoch=1, skip=2))
    assert all(torch.equal(a["item"], b["item"]) for a, b in zip(epoch_one[2:], resumed))


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
def test_ranks_take_disjoint_equal_shares(windows_by_format, streamed):
    plan, in_memory = windows_by_format[("parquet", False)]
    windows = StreamedWindows(plan.window_source(plan.train_path), 10) if streamed else in_memory
    shares = [list(windows.batches(8, shuffle=True, seed=1, epoch=4, rank=r, world=3)) for r in range(3)]
    assert len({len(share) for share in shares}) == 1  # the same number of batches on every rank
    sizes = [sum(len(b[PAD]) for b in share) for share in shares]
    assert sizes == [len(in_memory) // 3] * 3
    rows = [row for share in shares for row in as_rows(share)]
    everything = as_rows(in_memory.batches(16, shuffle=False))
    assert len(set(everything)) == len(everything)  # windows are distinct (real values), so shares
    assert len(set(rows)) == len(rows) and set(rows) <= set(everything)  # are disjoint subsets
    validation = [as_rows(windows.batches(8, shuffle=False, rank=r, world=3)) for r in range(3)]
    assert sorted(row for share in validation for row in share) == everything  # validation sees all
