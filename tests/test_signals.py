"""SIGTERM (a time limit, `kill`): preprocess ends its worker processes and training saves a
checkpoint; both say so, exit 143, leave no process behind, and resume to what an uninterrupted
run gives."""

import csv
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from conftest import made_project, run_cli, sequences_table
from processes import alive, descendants


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return made_project(tmp_path_factory.mktemp("signals"))


def terminated(process, code=143, number=signal.SIGTERM, resumed=()) -> str:
    """SIGTERM to a paused process, then let it (and the paused processes `resumed`) go on and
    handle it; returns its stderr."""
    process.send_signal(number)
    process.send_signal(signal.SIGCONT)
    for pid in resumed:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    stderr = process.communicate(timeout=300)[1]
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr, stderr
    return stderr


def long_config(made) -> list:
    """A table that takes 2 workers several seconds (a signal finds them at work); the arguments that
    preprocess it."""
    if not (made / "configs" / "long.yaml").exists():
        made.joinpath("data", "long.csv").write_text(sequences_table(20000, 20, 60).to_csv(index=False))
        config = yaml.safe_load((made / "configs" / "preprocess.yaml").read_text())
        config.update(data_path="data/long.csv", selected_columns=None, continue_preprocessing=True)
        config.update(n_cores=2, n_partitions=8)
        (made / "configs" / "long.yaml").write_text(yaml.safe_dump(config))
    return ["preprocess", "--config-path", "configs/long.yaml"]


def test_sigterm_ends_the_preprocess_workers_and_continue_preprocessing_resumes(made):
    args = long_config(made)
    whole = run_cli(*args, "--output-path", "whole", "-mc", "configs/whole.json", cwd=made)
    assert whole.returncode == 0, whole.stderr

    command = [sys.executable, "-m", "sequifier", *args, "--output-path", "cut", "-mc", "configs/cut.json"]
    process = subprocess.Popen(command, cwd=made, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(descendants(process.pid)) < 4:  # the resource tracker, the fork server and 2 workers
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGSTOP)
    workers = [pid for pid, _ in descendants(process.pid)]
    for pid in workers:  # paused too, so that the work cannot end before the signal is handled
        os.kill(pid, signal.SIGSTOP)
    stderr = terminated(process, resumed=workers)
    assert (
        "stopped: the worker processes are ended" in stderr
        and "continue_preprocessing: true resumes" in stderr
    )
    assert stderr.strip().endswith("sequifier preprocess: stopped by SIGTERM")
    time.sleep(0.5)
    left = [pid for pid in workers if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []
    assert (made / "cut" / ".long-work").is_dir() and not list((made / "cut").glob("long-split*"))

    resumed = run_cli(*args, "--output-path", "cut", "-mc", "configs/cut.json", cwd=made)
    assert resumed.returncode == 0, resumed.stderr
    assert "continuing from" in resumed.stderr
    for k in range(3):
        expected = pd.read_parquet(made / "whole" / f"long-split{k}.parquet")
        pd.testing.assert_frame_equal(pd.read_parquet(made / "cut" / f"long-split{k}.parquet"), expected)
    metadata = (made / "configs" / "cut.json").read_text()
    assert metadata.replace("cut", "whole") == (made / "configs" / "whole.json").read_text()  # but its paths


def test_a_killed_preprocess_leaves_no_worker_behind(made):
    """SIGKILL (an out-of-memory kill) cannot be handled: the workers see their run end and go too."""
    args = [*long_config(made), "--output-path", "killed", "-mc", "k.json"]
    process = subprocess.Popen(
        [sys.executable, "-m", "sequifier", *args], cwd=made, stderr=subprocess.DEVNULL
    )  # no pipe: a worker left behind would hold it open
    deadline = time.monotonic() + 120
    while len(descendants(process.pid)) < 4:  # the resource tracker, the fork server and 2 workers
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    workers = [pid for pid, _ in descendants(process.pid)]
    process.kill()
    process.wait()
    deadline = time.monotonic() + 10
    while [pid for pid in workers if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []


LOSSES = ("train_loss", "validation_loss")


def trained_whole(made) -> list:
    """The settings of the trainings here (3 epochs); the model "whole" trained with them, once."""
    values = ["training_spec.epochs=3", "wandb.mode=disabled", "export_onnx=false"]
    settings = [item for value in values for item in ("--set", value)]
    if not (made / "logs" / "sequifier-whole-metrics.csv").exists():
        whole = run_cli("train", "--model-name", "whole", *settings, cwd=made)
        assert whole.returncode == 0, whole.stderr
    return settings


def losses(made, name) -> list:
    with open(made / "logs" / f"sequifier-{name}-metrics.csv", newline="") as handle:
        return [(row["epoch"], row["kind"], *(row[k] for k in LOSSES)) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGUSR1])
def test_sigterm_saves_a_checkpoint_and_training_resumes_to_the_uninterrupted_result(made, number):
    """SIGTERM (a time limit) and SIGUSR1 (sent ahead of one): a checkpoint at the next batch
    boundary, exit 75 ("resume me")."""
    settings = trained_whole(made)
    name = f"cut-{number.name}"

    command = [sys.executable, "-m", "sequifier", "train", "--model-name", name, *settings]
    process = subprocess.Popen(command, cwd=made, stderr=subprocess.PIPE, text=True)
    first, deadline = made / "checkpoints" / f"sequifier-{name}-epoch-1.pt", time.monotonic() + 120
    while not first.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGSTOP)
    stderr = terminated(process, 75, number)
    where = re.search(
        f"stopped by {number.name} at epoch (\\d) batch (\\d+): saving a checkpoint to resume", stderr
    )
    assert where, stderr
    assert stderr.strip().endswith(
        f"sequifier train: stopped by {number.name} at epoch {where[1]} batch {where[2]}; its checkpoint is "
        "saved, continue_training: true resumes"
    )
    assert not list((made / "models").glob(f"sequifier-{name}-*"))
    assert not (made / "checkpoints" / f".sequifier-{name}.lock").exists()

    resumed = run_cli(
        "train", "--model-name", name, *settings, "--set", "training_spec.continue_training=true", cwd=made
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert losses(made, name) == losses(made, "whole")


def test_save_interval_minutes_bounds_what_a_hard_kill_loses(made):
    """Checkpoints within epochs by the clock, the newest keep_checkpoints kept: SIGKILL (which
    nothing can handle) in the middle of an epoch, and the run resumes from within it to the
    uninterrupted result."""
    settings = trained_whole(made)
    clock = [
        "--set",
        "training_spec.save_interval_minutes=0.0001",
        "--set",
        "training_spec.keep_checkpoints=2",
    ]
    command = [sys.executable, "-m", "sequifier", "train", "--model-name", "hard", *settings, *clock]
    process = subprocess.Popen(command, cwd=made, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((made / "checkpoints").glob("sequifier-hard-epoch-1-batch-*.pt")):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    process.kill()
    process.wait()
    saved = sorted((made / "checkpoints").glob("sequifier-hard-*.pt"))
    assert 1 <= len(saved) <= 2, saved
    resumed = run_cli(
        "train",
        "--model-name",
        "hard",
        *settings,
        *clock,
        "--set",
        "training_spec.continue_training=true",
        cwd=made,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"resuming from checkpoints/sequifier-hard-epoch-1-batch-\d+\.pt", resumed.stderr), (
        resumed.stderr
    )
    assert losses(made, "hard") == losses(made, "whole")
    # the clock's checkpoints within epoch 3 pruned epoch 2's (keep 2), then went with the epoch's end
    assert [p.name for p in (made / "checkpoints").glob("sequifier-hard-*.pt")] == [
        "sequifier-hard-epoch-3.pt"
    ]
