"""Runs that share a name or a folder: a run locks what it owns, a second one is refused at once
naming the holder (exit 74) and the first goes on untouched; a killed holder leaves no lock; a fresh
training starts without the checkpoints of an earlier run, and a resume continues its own run only."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import made_project, run_cli

TRAIN = ["--set", "wandb.mode=disabled", "--set", "export_onnx=false"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return made_project(tmp_path_factory.mktemp("locks"))


def read_metrics(path) -> list:
    """The model's rows of a metrics CSV (not the baselines)."""
    with open(path, newline="") as handle:
        return [row for row in csv.DictReader(handle) if not row["kind"].startswith("baseline")]


def started(*args, cwd, lock):
    """The CLI started in the background, once it holds `lock` (its holder written), then paused."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sequifier", *map(str, args)], cwd=cwd, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (lock.is_file() and lock.read_text().strip()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGSTOP)  # holds the lock while the second run tries
    return process


def finished(process) -> str:
    process.send_signal(signal.SIGCONT)
    stderr = process.communicate(timeout=300)[1]
    assert process.returncode == 0, stderr
    return stderr


def refused_by(result, holder, command: str) -> str:
    assert result.returncode == 74, result.stderr
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert f"is in use by pid {holder.pid} (sequifier {command}, started " in line, line
    return line


def test_a_second_training_of_a_model_name_is_refused_and_the_first_finishes_untouched(made):
    lock = made / "checkpoints" / ".sequifier-shared.lock"
    first = started(
        "train", "--model-name", "shared", "--set", "training_spec.epochs=2", *TRAIN, cwd=made, lock=lock
    )
    second = run_cli("train", "--model-name", "shared", "--set", "training_spec.epochs=1", *TRAIN, cwd=made)
    line = refused_by(second, first, "train")
    assert "model_name shared (its models, checkpoints and metrics)" in line
    assert line.endswith("wait for it, or use another model_name")
    finished(first)
    epochs = [int(row["epoch"]) for row in read_metrics(made / "logs" / "sequifier-shared-metrics.csv")]
    assert epochs == [0, 1, 2]
    models = sorted(p.name for p in (made / "models").glob("sequifier-shared-*"))
    assert "sequifier-shared-last-2.pt" in models and all(name.endswith("-2.pt") for name in models)
    assert not lock.exists()  # released, and its file removed


def test_a_second_preprocess_on_one_output_is_refused_and_the_first_finishes(made):
    lock = made / "shared" / ".example.lock"
    args = ["preprocess", "--output-path", "shared", "--n-partitions", "2"]
    first = started(*args, cwd=made, lock=lock)
    line = refused_by(run_cli(*args, cwd=made), first, "preprocess")
    assert "the outputs of preprocessing example (in " in line and "use another output_path" in line
    finished(first)
    assert sorted(p.name for p in (made / "shared").iterdir()) == [
        f"example-split{k}.parquet" for k in range(3)
    ]


def test_a_killed_holder_leaves_no_lock(made):
    lock = made / "killed" / ".example.lock"
    args = ["preprocess", "--output-path", "killed", "--n-partitions", "2"]
    first = started(*args, cwd=made, lock=lock)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert lock.exists()  # its file stays, its lock does not
    again = run_cli(*args, cwd=made)
    assert again.returncode == 0, again.stderr


def checkpoints_of(made, name) -> list:
    return sorted(p.name for p in (made / "checkpoints").glob(f"sequifier-{name}-epoch-*"))


def test_a_fresh_training_starts_clean_and_a_resume_continues_its_own_run(made):
    def train(*settings):
        return run_cli(
            "train", "--model-name", "fresh", *TRAIN, *[a for s in settings for a in ("--set", s)], cwd=made
        )

    assert train("training_spec.epochs=2").returncode == 0
    assert checkpoints_of(made, "fresh") == ["sequifier-fresh-epoch-1.pt", "sequifier-fresh-epoch-2.pt"]
    shorter = train("training_spec.epochs=1", "training_spec.continue_training=true")
    assert shorter.returncode == 2 and "Traceback" not in shorter.stderr
    assert "training_spec.epochs: 1 is fewer than the 2 epoch(s) done of the 2 planned" in shorter.stderr
    anew = train("training_spec.epochs=1")
    assert anew.returncode == 0, anew.stderr
    assert "removed 2 checkpoint(s) of an earlier run of fresh" in anew.stderr
    assert checkpoints_of(made, "fresh") == ["sequifier-fresh-epoch-1.pt"]
    assert "done: best epoch 1 of 1" in anew.stderr
    resumed = train("training_spec.epochs=2", "training_spec.continue_training=true")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "sequifier-fresh-epoch-1.pt (epoch 1 done)" in resumed.stderr
    epochs = [int(row["epoch"]) for row in read_metrics(made / "logs" / "sequifier-fresh-metrics.csv")]
    assert epochs == [0, 1, 2]
    assert os.listdir(made / "checkpoints").count(".sequifier-fresh.lock") == 0


def test_a_second_inference_onto_the_same_outputs_is_refused_and_the_first_finishes(made):
    trained = run_cli("train", "--set", "training_spec.epochs=1", *TRAIN, cwd=made)
    assert trained.returncode == 0, trained.stderr
    lock = made / "outputs" / "predictions" / ".sequifier-default-best-predictions.lock"
    first = started("infer", cwd=made, lock=lock)
    line = refused_by(run_cli("infer", cwd=made), first, "infer")
    assert "the outputs of sequifier-default-best (sequifier-default-best-predictions" in line
    assert line.endswith("wait for it, or use another output_path")
    finished(first)
    written = list((made / "outputs" / "predictions").glob("sequifier-default-best-predictions*"))
    assert len(written) == 1 and written[0].stat().st_size > 0
    assert not lock.exists()
