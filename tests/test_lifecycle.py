"""A training run from launch to outcome (sequifier.train.lifecycle), as the workflow and the search
run it: what a done, a failed and a killed run leave, and which checkpoints a run resumes from."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import made_project

from sequifier.train.lifecycle import STAMP, Run, launch_command, slurm_seconds_left


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return made_project(tmp_path_factory.mktemp("lifecycle"))


def run_config(project, name, epochs=1, **model_spec) -> str:
    """A run of the project's train config in runs/{name}/ (its models, checkpoints and logs),
    small and fast; returns the config's path."""
    config = yaml.safe_load((project / "configs/train.yaml").read_text())
    folder = f"runs/{name}"
    config |= {"project_root": str(project), "model_name": name, "export_onnx": False}
    config |= {f"{kind}_path": f"{folder}/{kind}" for kind in ("models", "checkpoints", "logs")}
    config["training_spec"]["epochs"] = epochs
    config["model_spec"] |= model_spec
    config["wandb"]["mode"] = "disabled"
    path = project / folder / "train.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return str(path)


def lifecycle(project, name, config, gpus=0) -> Run:
    """The run as a workflow job lays it out: status, metrics copy and log next to its config."""
    folder = project / "runs" / name
    return Run(
        name,
        launch_command(config, resume=True, python=sys.executable),
        status=folder / "status.json",
        log=folder / "train.log",
        gpus=gpus,
        inputs=[config, project / "configs/metadata_configs/example.json"],
        checkpoints=folder / "checkpoints",
        metrics=folder / "logs" / f"sequifier-{name}-metrics.csv",
        metrics_copy=folder / "metrics.csv",
        models=folder / "models",
    )


def status_of(run: Run) -> dict:
    return json.loads(run.status.read_text())


def epochs(metrics) -> list:
    """The epochs of a metrics CSV, from 0 (untrained)."""
    with open(metrics) as handle:
        return [row["epoch"] for row in csv.DictReader(handle) if row["kind"] == "epoch"]


def test_one_process_or_torchrun_with_a_process_per_gpu_sharing_the_threads(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_GPU", raising=False)
    assert launch_command("run.yaml") == ["python", "-m", "sequifier", "train", "--config-path", "run.yaml"]
    on_cpu = launch_command("run.yaml", gpus=0, resume=True)
    assert on_cpu[-4:] == [
        "--set",
        "training_spec.device=cpu",
        "--set",
        "training_spec.continue_training=true",
    ]
    on_two = launch_command("run.yaml", gpus=2)
    assert on_two[:6] == ["torchrun", "--standalone", "--nproc_per_node=2", "-m", "sequifier", "train"]
    assert "training_spec.device=cuda" in on_two
    run = Run("a", on_two, status="status.json", log="train.log", gpus=2, threads=8)
    assert run.environment()["OMP_NUM_THREADS"] == "4"


def test_in_a_slurm_gpu_job_each_process_gets_the_cpus_granted_per_gpu(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_GPU", "16")  # sbatch --gpus=2 --cpus-per-gpu=16
    on_two = Run("a", launch_command("run.yaml", gpus=2), status="s.json", log="t.log", gpus=2, threads=8)
    assert on_two.environment()["OMP_NUM_THREADS"] == "16"
    on_cpu = Run("a", launch_command("run.yaml", gpus=0), status="s.json", log="t.log", gpus=0, threads=8)
    assert on_cpu.environment()["OMP_NUM_THREADS"] == "8"  # a CPU job: its threads (--cpus-per-task)
    monkeypatch.setenv("SLURM_CPUS_PER_GPU", "")
    assert on_two.environment()["OMP_NUM_THREADS"] == "4"


def test_a_done_run_writes_its_status_and_its_metrics_copy(made):
    run = lifecycle(made, "good", run_config(made, "good"))
    assert run.run_to_end() == 0
    status = status_of(run)
    assert (status["run"], status["status"], status["exit_code"]) == ("good", "done", 0)
    assert status["wall_s"] > 0 and run.finished()
    assert run.metrics_copy.read_bytes() == run.metrics.read_bytes() and epochs(run.metrics_copy) == [
        "0",
        "1",
    ]
    assert (run.checkpoints / "sequifier-good-epoch-1.pt").is_file()
    assert not (run.checkpoints / STAMP).exists(), "a finished run is not resumed"
    assert "training good" in run.log.read_text()


def test_a_bad_config_fails_with_an_empty_metrics_file_and_models_folder(made):
    run = lifecycle(made, "bad", run_config(made, "bad", n_head=3))  # 3 heads do not divide 32
    assert run.run_to_end() == 0  # recorded: the other runs go on
    status = status_of(run)
    assert (status["status"], status["exit_code"]) == ("failed", 2) and not run.finished()
    assert run.metrics_copy.read_text() == "" and list(run.models.iterdir()) == []
    assert "model_spec.n_head: 3 does not divide model_spec.dim_model (32)" in run.log.read_text()
    assert not (run.checkpoints / STAMP).exists()


def test_checkpoints_stay_under_the_same_stamp_and_are_dropped_under_another(made):
    config = run_config(made, "stamped")
    run = lifecycle(made, "stamped", config)
    run.begin()
    stale = run.checkpoints / "sequifier-stamped-epoch-1.pt"
    stale.write_bytes(b"a checkpoint")
    run.begin()
    assert stale.is_file(), "the same inputs resume from their checkpoints"
    run_config(made, "stamped", epochs=2)
    run.begin()
    assert not stale.exists(), "a changed config starts anew"
    assert (run.checkpoints / STAMP).is_file()

    stale.write_bytes(b"a checkpoint")
    lifecycle(made, "stamped", config, gpus=1).begin()
    assert not stale.exists(), "another number of GPUs starts anew"

    assert run.finish(130, 1.0) is None, "killed: no outcome"
    assert run.finish(1, 1.0) is None, "a crash (out of memory, a timeout): no outcome, resumed"
    assert run.finish(75, 1.0) is None, "stopped at a checkpoint by a time limit: resumed"
    assert not run.status.exists() and (run.checkpoints / STAMP).is_file()
    assert run.finish(-signal.SIGKILL, 1.0) is None
    assert run.finish(1, 1.0, stopped=True) is None, "stopped by a signal (torchrun then exits 1): no outcome"
    assert not run.status.exists() and (run.checkpoints / STAMP).is_file()


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGUSR1])
def test_an_interrupted_train_run_exits_non_zero_and_resumes_from_its_checkpoint(made, number):
    """`sequifier train-run`, the workflow's train job: Ctrl-C (to the process group, as a terminal
    sends it) or SIGUSR1 (to the job alone, as sent ahead of a time limit) after the first epoch,
    then again."""
    name = f"resumed-{number.name}"
    config = run_config(made, name, epochs=2)
    run = lifecycle(made, name, config)
    step = [
        sys.executable, "-m", "sequifier", "train-run", "--run", "resumed", "--status", run.status,
        "--log", run.log, "--inputs", *run.inputs, "--checkpoints", run.checkpoints,
        "--metrics", run.metrics, "--metrics-copy", run.metrics_copy, "--models", run.models,
        "--", *run.command,
    ]  # fmt: skip
    started = subprocess.Popen(list(map(str, step)), start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (run.checkpoints / f"sequifier-{name}-epoch-1.pt").exists():
        assert started.poll() is None and time.monotonic() < deadline, started.communicate()
        time.sleep(0.05)
    if number == signal.SIGINT:
        os.killpg(started.pid, signal.SIGINT)
    else:
        started.send_signal(number)
    assert started.wait(timeout=120) == 128 + number
    if number == signal.SIGUSR1:  # passed on as SIGTERM: a checkpoint at the next batch boundary
        assert "sequifier train: stopped by SIGTERM at epoch" in run.log.read_text()
    assert not run.status.exists() and not run.metrics_copy.exists()
    assert (run.checkpoints / STAMP).is_file()

    again = subprocess.run(list(map(str, step)), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in run.log.read_text()
    assert status_of(run)["status"] == "done"
    assert epochs(run.metrics_copy) == ["0", "1", "2"]


def test_only_bad_input_fails_a_run_also_under_torchrun_and_a_crash_is_tried_again(made):
    """torchrun returns 1 for its processes' exit 2: the verdict they leave makes the run failed,
    with the error in its status. A crash (exit 1, no verdict) is incomplete: the job fails, its
    checkpoints and their stamp stay for the next attempt."""
    config = run_config(made, "bad-ddp", n_head=3)
    run = lifecycle(made, "bad-ddp", config)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run.command = [*launch, "-m", "sequifier", "train", "--config-path", config]
    assert run.run_to_end() == 0
    status = status_of(run)
    assert (status["status"], status["exit_code"]) == ("failed", 1), status
    assert "model_spec.n_head: 3 does not divide model_spec.dim_model (32)" in status["error"]
    assert not run.verdict.exists() and list(run.models.iterdir()) == []

    crash = lifecycle(made, "crash", run_config(made, "crash"))
    crash.command = [sys.executable, "-c", "raise RuntimeError('CUDA out of memory')"]
    crash.checkpoints.mkdir(parents=True, exist_ok=True)
    crash.begin()
    saved = crash.checkpoints / "sequifier-crash-epoch-1.pt"
    saved.write_bytes(b"a checkpoint")
    assert crash.run_to_end() == 1, "the job fails: Snakemake tries it again"
    assert not crash.status.exists() and not crash.metrics_copy.exists()
    assert saved.is_file() and (crash.checkpoints / STAMP).is_file()
    crash.begin()  # the next attempt, with the same inputs
    assert saved.is_file(), "the checkpoints survive a retry"


def test_the_time_left_of_a_slurm_job():
    assert slurm_seconds_left("1-02:03:04\n") == 93784
    assert slurm_seconds_left("2:03:04") == 7384 and slurm_seconds_left("0:45") == 45
    assert slurm_seconds_left("UNLIMITED") is None and slurm_seconds_left("") is None
