"""Time limits on the local SLURM cluster (scripts/slurm-cluster): a training that needs several
times its job's 1-minute limit finishes within one `snakemake --profile` invocation (each attempt
stops itself at a checkpoint ahead of the limit, Snakemake's retries resume it) and ends with the
best validation loss of an uninterrupted run."""

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slurm_cluster
import yaml
from conftest import REPO

BIN = Path(sys.executable).parent
RUN = "dim_model-16"
EPOCHS = 12  # some 2-3 minutes of training on one CPU thread: several 1-minute jobs


def workflow_copy(root: Path) -> Path:
    """The repository's workflow and example with one run of EPOCHS epochs, on one CPU thread."""
    root.mkdir()
    for name in ("Snakefile", "workflow", "config", "resources", "envs"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    experiment = yaml.safe_load((root / "config/config.yaml").read_text())
    experiment.update(partitions=2, infer_runs="best")
    experiment["search"]["space"] = {"model_spec.dim_model": [16]}
    (root / "config/config.yaml").write_text(yaml.safe_dump(experiment))
    train = yaml.safe_load((root / "config/train.yaml").read_text())
    train["training_spec"].update(epochs=EPOCHS, save_interval_minutes=0.25)
    train["export_onnx"] = False
    (root / "config/train.yaml").write_text(yaml.safe_dump(train))
    return root


def cluster_profile(root: Path, runtime: int) -> list:
    """workflow/profiles/slurm with the local cluster's values (its partition, memory, one CPU,
    squeue for the job states: no accounting) and train jobs of `runtime` minutes."""
    profile = yaml.safe_load((root / "workflow/profiles/slurm/config.yaml").read_text())
    profile |= {"slurm-status-command": "squeue", "slurm-init-seconds-before-status-checks": 1, "retries": 8}
    resources = {"slurm_partition": "cpu", "runtime": 10, "mem_mb": 1000}
    profile["default-resources"] = {**profile["default-resources"], **resources}
    profile["default-resources"].pop("mem_mb_per_cpu", None)
    profile["set-threads"]["train"] = 1
    profile["set-resources"]["train"] = {**resources, "gpu": 0, "runtime": runtime, "nodes": 1}
    folder = root / "cluster-profile"
    folder.mkdir(exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return ["--profile", str(folder)]


def snakemake(root: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ["PATH"]]), "WANDB_MODE": "disabled"}
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=root, env=env, capture_output=True, text=True)


def epoch_rows(root: Path) -> list:
    with open(root / f"results/example/runs/{RUN}/metrics.csv") as handle:
        return [row for row in csv.DictReader(handle) if row["kind"] == "epoch"]


@pytest.mark.slurm
@pytest.mark.slow
def test_a_training_longer_than_its_time_limit_finishes_within_one_invocation(tmp_path):
    limited = workflow_copy(tmp_path / "limited")
    whole = workflow_copy(tmp_path / "whole")
    started = time.monotonic()
    result = snakemake(limited, *cluster_profile(limited, runtime=1))
    wall = time.monotonic() - started
    jobs = slurm_cluster.jobs_of(limited)
    slurm_cluster.cancel(*jobs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    train_jobs = sorted(job for job, (comment, _) in jobs.items() if comment.startswith("rule_train_"))
    assert len(train_jobs) >= 3, jobs  # the limit stopped it at least twice
    log = (limited / f"logs/example/train/{RUN}.log").read_text()
    assert "resuming from" in log and "stopped by SIGUSR1 at epoch" in log

    local = snakemake(whole, "--cores", "2", "--set-threads", "train=1")
    assert local.returncode == 0, local.stderr[-3000:]
    ours, reference = epoch_rows(limited), epoch_rows(whole)
    assert [row["epoch"] for row in ours] == [str(e) for e in range(EPOCHS + 1)]
    best = [min(float(row["validation_loss"]) for row in rows[1:]) for rows in (ours, reference)]
    assert best[0] == best[1]
    print(
        f"time limit 1 min: {len(train_jobs)} train jobs (resubmissions {len(train_jobs) - 1}), "
        f"{wall:.0f} s in all; best validation loss {best[0]:.6f} (uninterrupted {best[1]:.6f})"
    )
