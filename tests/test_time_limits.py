"""Train jobs that do not end by themselves are retried and resume: one whose training is killed
(as out of memory kills it) is tried again by Snakemake's retries from its checkpoint; and on the
local SLURM cluster (scripts/slurm-cluster), a training that needs several jobs of a 1-minute
limit finishes within one `snakemake --profile` invocation (each attempt stops itself at a
checkpoint ahead of the limit, the profile's retries resume it) and ends with the best validation
loss of an uninterrupted run."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slurm_cluster
import yaml
from conftest import REPO
from processes import descendants

BIN = Path(sys.executable).parent
RUN = "dim_model-16"
METRICS = f"results/example/runs/{RUN}/metrics.csv"  # the training, not the inference after it
EPOCHS = 500  # some 70 s of training on one CPU thread here: about 3 jobs of a 1-minute limit


def workflow_copy(root: Path, epochs: int = EPOCHS) -> Path:
    """The repository's workflow and example with one run of `epochs` epochs."""
    root.mkdir()
    for name in ("Snakefile", "workflow", "config", "resources", "envs"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    experiment = yaml.safe_load((root / "config/config.yaml").read_text())
    experiment.update(partitions=2, infer_runs="best")
    experiment["search"]["space"] = {"model_spec.dim_model": [16]}
    (root / "config/config.yaml").write_text(yaml.safe_dump(experiment))
    train = yaml.safe_load((root / "config/train.yaml").read_text())
    train["training_spec"].update(epochs=epochs, save_interval_minutes=0.25)
    train["export_onnx"] = False
    (root / "config/train.yaml").write_text(yaml.safe_dump(train))
    return root


def snakemake(root: Path, *args, wait: bool = True):
    """Snakemake in `root`: its result, or (wait false) the process, its output in files of `root`."""
    env = {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ["PATH"]]), "WANDB_MODE": "disabled"}
    command = [str(BIN / "snakemake"), *args]
    if wait:
        return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    out, err = (open(root / name, "w") for name in ("snakemake.out", "snakemake.err"))
    return subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=err)


@pytest.mark.slow
def test_a_killed_training_fails_its_job_and_a_retry_resumes_it(tmp_path):
    """SIGKILL to the training (what an out-of-memory kill does) once it has a checkpoint: the run
    is not marked failed, the job fails, and Snakemake's retry resumes from the checkpoint."""
    root = workflow_copy(tmp_path / "killed", epochs=3)
    env = {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ["PATH"]]), "WANDB_MODE": "disabled"}
    command = [str(BIN / "snakemake"), METRICS, "--cores", "2", "--retries", "1"]
    started = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    checkpoint = root / f"results/example/runs/{RUN}/checkpoints/sequifier-{RUN}-epoch-1.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert started.poll() is None and time.monotonic() < deadline, started.communicate()[0][-3000:]
        time.sleep(0.05)
    [training] = [
        pid
        for pid, line in descendants(started.pid)
        if " sequifier train --config-path" in line and "train-run" not in line and "bash" not in line
    ]
    os.kill(training, signal.SIGKILL)
    output = started.communicate(timeout=300)[0]
    assert started.returncode == 0, output[-3000:]
    log = (root / f"logs/example/train/{RUN}.log").read_text()
    assert "resuming from" in log, log[-2000:]  # the retry, its output after the killed attempt's
    status = json.loads((root / f"results/example/runs/{RUN}/status.json").read_text())
    assert status["status"] == "done"
    assert [row["epoch"] for row in epoch_rows(root)] == ["0", "1", "2", "3"]


def epoch_rows(root: Path) -> list:
    with open(root / METRICS) as handle:
        return [row for row in csv.DictReader(handle) if row["kind"] == "epoch"]


@pytest.mark.slurm
@pytest.mark.slow
def test_a_training_longer_than_its_time_limit_finishes_within_one_invocation(tmp_path):
    limited = workflow_copy(tmp_path / "limited")
    whole = workflow_copy(tmp_path / "whole")
    # the uninterrupted run on the other core, meanwhile
    local = snakemake(whole, METRICS, "--cores", "1", "--set-threads", "train=1", wait=False)
    try:  # the preprocessing here (on the cluster it is a job per step), the training on the cluster
        prepared = snakemake(limited, METRICS, "--cores", "1", "--omit-from", "train")
        assert prepared.returncode == 0, prepared.stderr[-3000:]
        started, earlier = time.monotonic(), set(slurm_cluster.jobs_of(limited))  # of a folder used before
        result = snakemake(limited, METRICS, *slurm_cluster.cluster_profile(limited, runtime=1, retries=10))
    except BaseException:
        local.kill()
        raise
    wall = time.monotonic() - started
    jobs = {job: found for job, found in slurm_cluster.jobs_of(limited).items() if job not in earlier}
    slurm_cluster.cancel(*jobs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    train_jobs = sorted(
        (job for job, (comment, _) in jobs.items() if comment.startswith("rule_train_")), key=int
    )
    states = [jobs[job][1] for job in train_jobs]
    # each attempt but the last stopped itself ahead of the limit (a job the limit stopped is TIMEOUT);
    # how many attempts it takes depends on the speed of the machine (2 or 3 here)
    assert len(states) >= 2 and states == ["FAILED"] * (len(states) - 1) + ["COMPLETED"], states
    assert "resuming from" in (limited / f"logs/example/train/{RUN}.log").read_text()

    assert local.wait(timeout=600) == 0, (whole / "snakemake.err").read_text()[-3000:]
    ours, reference = epoch_rows(limited), epoch_rows(whole)
    assert [row["epoch"] for row in ours] == [str(e) for e in range(EPOCHS + 1)]
    for row, same in zip(ours, reference):  # the whole curve, the epochs after each resume too
        assert (row["train_loss"], row["validation_loss"]) == (same["train_loss"], same["validation_loss"])
    best = [min(float(row["validation_loss"]) for row in rows[1:]) for rows in (ours, reference)]
    assert best[0] == best[1]
    print(
        f"time limit 1 min: {len(train_jobs)} train jobs (resubmissions {len(train_jobs) - 1}), "
        f"{wall:.0f} s in all; best validation loss {best[0]:.6f} (uninterrupted {best[1]:.6f})"
    )
