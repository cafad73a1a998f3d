"""Model bundles and checkpoints are read without unpickling objects (torch.load weights_only=True),
and every write reaches the disk in an order that never leaves a run without a complete file."""

import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_infer import model_file

from sequifier import config
from sequifier.errors import DataError
from sequifier.files import atomic_path, publish, write_json
from sequifier.model import export
from sequifier.model.export import load_bundle, read_bundle
from sequifier.train import checkpoint
from sequifier.train.plan import make_train_plan
from sequifier.train.session import export_run


class RunsCode:
    """An object whose unpickling makes a folder: what a malicious file could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


# -- pt bundles --------------------------------------------------------------------------------


def test_a_bundle_is_tensors_and_plain_data_and_reads_without_pickle(trained_project):
    path = trained_project / model_file(trained_project)
    plain = torch.load(path, map_location="cpu", weights_only=True)  # what the bundle is, by torch alone
    bundle = read_bundle(path)
    assert (
        bundle.keys() == plain.keys() >= {"format", "kind", "model_args", "config", "metadata", "state_dict"}
    )
    assert bundle["format"] == "sequifier-model/2" and bundle["kind"] == "generative"
    assert bundle["metadata"]["id_maps"]["itemId"] == plain["metadata"]["id_maps"]["itemId"]
    assert all(isinstance(t, torch.Tensor) for t in bundle["state_dict"].values())
    model, loaded = load_bundle(path)
    assert sum(p.numel() for p in model.parameters()) == sum(t.numel() for t in bundle["state_dict"].values())
    assert loaded["epoch"] == bundle["epoch"]


def test_a_bundle_that_needs_pickle_is_refused_and_never_unpickled(trained_project, tmp_path):
    bundle = read_bundle(trained_project / model_file(trained_project))
    marker = tmp_path / "code-ran"
    bundle["note"] = RunsCode(marker)
    path = tmp_path / "sequifier-odd-best-1.pt"
    torch.save(bundle, path)
    for load in (read_bundle, load_bundle):
        with pytest.raises(DataError) as raised:
            load(path)
        message = str(raised.value)
        assert message.startswith(
            f"{path}: this model file holds objects other than tensors and plain data ("
        )
        assert "mkdir" in message  # the callable the file would have run
        assert "it is not loaded, since unpickling them could run code" in message
    assert not marker.exists()


def test_a_damaged_bundle_is_a_clear_error_without_unsafe_advice(trained_project, tmp_path):
    path = tmp_path / "cut.pt"
    path.write_bytes((trained_project / model_file(trained_project)).read_bytes()[:5000])
    with pytest.raises(DataError, match=r"cut\.pt: cannot read this model file \(") as raised:
        read_bundle(path)
    assert "weights_only" not in str(raised.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(DataError, match=r"foreign\.pt: not a sequifier model bundle"):
        read_bundle(foreign)


# -- exports: new files first, then the old ones go ---------------------------------------------


def test_new_exports_are_written_before_the_old_ones_are_removed(trained_project, tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    for path in (trained_project / "models").glob("sequifier-default-[bl][ea]st-*"):
        shutil.copy2(path, models)
    (models / "sequifier-default-notes.txt").write_text("not a model\n")  # left alone
    old = sorted(p.name for p in models.iterdir())
    assert len(old) == 9  # best and last, generative and embedding, pt and ONNX; the notes
    loaded = config.load(
        "train",
        trained_project / "configs" / "train.yaml",
        {"project_root": str(trained_project), "models_path": str(models)},
    )
    plan = make_train_plan(loaded)
    model, _ = load_bundle(trained_project / model_file(trained_project))
    seen = []

    def disk_full(path, *args):  # the first ONNX file cannot be written
        seen.append(sorted(p.name for p in models.iterdir()))
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(export, "write_onnx", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_run(plan, model, None, 7, 8)
    # while the first new file was being written, every old one was there, with the new pt beside
    assert seen == [sorted([*old, "sequifier-default-best-7.pt"])]
    assert set(old) <= {p.name for p in models.iterdir()}  # the old models survive the failure
    monkeypatch.undo()

    plan.config["export_onnx"] = False  # the rest without ONNX: quicker, the same order
    written = export_run(plan, model, None, 7, 8)
    assert sorted(p.name for p in written) == [
        "sequifier-default-best-7.pt",
        "sequifier-default-best-embedding-7.pt",
        "sequifier-default-last-8.pt",
        "sequifier-default-last-embedding-8.pt",
    ]
    assert sorted(p.name for p in models.iterdir()) == sorted(
        [*(p.name for p in written), "sequifier-default-notes.txt"]
    )
    assert export.find_export(models, "default") == models / "sequifier-default-best-7.pt"
    assert read_bundle(models / "sequifier-default-last-8.pt")["epoch"] == 8


def test_after_an_interrupted_export_the_newest_best_model_is_found(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for name, when in (("sequifier-x-best-9.pt", 1_000), ("sequifier-x-best-3.pt", 2_000)):
        (models / name).write_bytes(b"")
        os.utime(models / name, (when, when))
    (models / "sequifier-x-best-embedding-12.pt").write_bytes(b"")
    (models / "sequifier-xy-best-20.pt").write_bytes(b"")
    assert export.find_export(models, "x") == models / "sequifier-x-best-3.pt"  # newer, though epoch 3
    assert export.find_export(models, "x", embedding=True) == models / "sequifier-x-best-embedding-12.pt"
    assert export.find_export(models, "x", label="last") is None
    assert export.find_export(tmp_path / "missing", "x") is None


# -- checkpoints ----------------------------------------------------------------------------------


def draws() -> tuple:
    return np.random.random(3).tolist(), torch.rand(3).tolist(), [random.random() for _ in range(3)]


def test_a_checkpoint_reads_without_pickle_and_restores_the_random_states(tmp_path):
    path = checkpoint.checkpoint_file(tmp_path, "m", 2)
    np.random.normal()  # a cached gaussian is part of numpy's state
    state = {"model": {"w": torch.arange(4.0)}, "progress": {"epoch": 2, "best_loss": float("inf")}}
    checkpoint.save(path, state)
    expected = draws()
    plain = torch.load(path, map_location="cpu", weights_only=True)
    assert plain["progress"] == {"epoch": 2, "best_loss": float("inf")}
    loaded = checkpoint.load(path)
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0))
    draws()
    checkpoint.restore_random_states(loaded["random"])
    assert draws() == expected


def test_a_checkpoint_holding_other_objects_is_a_clear_error(tmp_path):
    path = checkpoint.checkpoint_file(tmp_path, "m", 1)
    marker = tmp_path / "code-ran"
    torch.save({"format": checkpoint.FORMAT, "random": {"numpy": np.zeros(3)}, "x": RunsCode(marker)}, path)
    with pytest.raises(DataError) as raised:
        checkpoint.load(path)
    message = str(raised.value)
    assert message.startswith(
        f"{path}: cannot resume from this checkpoint, it holds objects other than tensors and plain data ("
    )
    assert "numpy" in message and "mkdir" in message
    assert "delete it to resume from an earlier one, or set training_spec.continue_training: false" in message
    assert not marker.exists()


def test_partial_checkpoints_go_only_after_the_epochs_checkpoint_is_saved(tmp_path):
    partial = [checkpoint.checkpoint_file(tmp_path, "m", 1, batches) for batches in (6, 9)]
    other = checkpoint.checkpoint_file(tmp_path, "m-other", 1, 6)
    for path in [*partial, other]:
        checkpoint.save(path, {"model": {}})
    end = checkpoint.checkpoint_file(tmp_path, "m", 2)
    with pytest.raises(Exception, match="pickle"):  # the epoch's checkpoint cannot be written
        checkpoint.save(end, {"model": {}, "bad": lambda: None}, supersedes_partial=True)
    assert sorted(tmp_path.iterdir()) == sorted([*partial, other])  # kept, and no temporaries
    assert checkpoint.latest(tmp_path, "m") == partial[1]
    checkpoint.save(end, {"model": {}}, supersedes_partial=True)
    assert sorted(tmp_path.iterdir()) == sorted([end, other])
    assert checkpoint.latest(tmp_path, "m") == end


# -- durable writes -------------------------------------------------------------------------------


@pytest.fixture
def disk_events(monkeypatch):
    """The fsync and rename calls made, in order, with the paths they were made on (the real calls
    run; Linux names an open file through /proc)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("names open files through /proc")
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(descriptor):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{descriptor}"))))
        return real_fsync(descriptor)

    def replace(source, target):
        events.append(("rename", Path(source), Path(target)))
        return real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def check_durable(events: list, target: Path, files: list) -> None:
    """Each of `files` (relative to the written file or folder) flushed before the rename onto
    `target`, and the folder holding `target` flushed after it."""
    (rename,) = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == target]
    tmp = events[rename][1]
    assert tmp.parent == target.parent and tmp.name.startswith(f".{target.name}.tmp-")
    flushed = [e[1] for e in events[:rename] if e[0] == "fsync"]
    for name in files:
        assert (tmp / name if name else tmp) in flushed
    assert ("fsync", target.parent) in events[rename + 1 :]


def test_a_file_is_on_disk_before_it_is_renamed_into_place(tmp_path, disk_events):
    target = tmp_path / "out" / "table.csv"
    with atomic_path(target) as tmp:
        tmp.write_text("a,b\n1,2\n")
    check_durable(disk_events, target, [""])
    disk_events.clear()
    write_json(tmp_path / "metadata.json", {"a": 1})
    check_durable(disk_events, tmp_path / "metadata.json", [""])
    assert (tmp_path / "metadata.json").read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metadata.json", "out"]  # no temporaries


def test_a_folder_replaces_the_old_one_only_when_all_its_files_are_on_disk(tmp_path, disk_events):
    target = tmp_path / "shards"
    target.mkdir()
    (target / "old.csv").write_text("old\n")
    with atomic_path(target) as tmp:
        (tmp / "deep").mkdir(parents=True)
        (tmp / "part-0.csv").write_text("0\n")
        (tmp / "deep" / "part-1.csv").write_text("1\n")
        assert (target / "old.csv").read_text() == "old\n"  # the old folder stays until the end
    check_durable(disk_events, target, ["part-0.csv", "deep/part-1.csv", "deep", ""])
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "deep",
        "deep/part-1.csv",
        "part-0.csv",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]  # neither temporary nor old copy


def test_a_failed_write_leaves_the_old_file_untouched(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]


def test_publish_flushes_the_file_and_the_rename(tmp_path, disk_events):
    source, target = tmp_path / "work" / "merged.parquet", tmp_path / "data" / "split0.parquet"
    source.parent.mkdir()
    source.write_bytes(b"rows")
    publish(source, target)
    (rename,) = [i for i, e in enumerate(disk_events) if e[0] == "rename"]
    assert disk_events[rename][1:] == (source, target)
    assert ("fsync", source) in disk_events[:rename] and ("fsync", target.parent) in disk_events[rename + 1 :]
    assert target.read_bytes() == b"rows" and not source.exists()
