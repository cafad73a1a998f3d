"""The Snakemake workflow: lint, dry runs, a real run that matches the CLI and trains the example
model, a no-op re-run, a changed train config that trains afresh, an interrupted training that
resumes, and the SLURM submission of the train job (stub SLURM commands record their arguments)."""

import csv
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_cli

BIN = Path(sys.executable).parent
RUN = Path("results/example/runs/default")


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """A copy of the repository's workflow and example, with a fast 3-part config."""
    root = tmp_path_factory.mktemp("workflow")
    for name in ("Snakefile", "workflow", "config", "resources", "envs"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    (root / "profiles").symlink_to("workflow/profiles")
    experiment = yaml.safe_load((root / "config" / "config.yaml").read_text())
    experiment["partitions"] = 3
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(experiment))
    return root


@pytest.fixture(scope="module")
def built(workflow):
    """The workflow run once, for real, on 2 cores."""
    result = snakemake(workflow, "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    return workflow


def copy_of(root, tmp_path):
    """A copy of a built workflow folder (time stamps and Snakemake's records kept)."""
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, symlinks=True)
    return copy


def snakemake(root, *args, path=None, wait=True):
    """Run snakemake in root; with wait=False, start it in its own process group and return it."""
    search = os.pathsep.join([*([str(path)] if path else []), str(BIN), os.environ["PATH"]])
    env = {**os.environ, "PATH": search, "WANDB_MODE": "disabled"}
    command = [str(BIN / "snakemake"), *args]
    if not wait:
        return subprocess.Popen(
            command,
            cwd=root,
            env=env,
            start_new_session=True,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)


def job_counts(output):
    table = output.split("Job stats:")[-1].split("Reasons:")[0]
    return {
        line.split()[0]: int(line.split()[1])
        for line in table.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }


def metrics(root):
    with open(root / RUN / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_lint_is_clean(workflow):
    result = snakemake(workflow, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition" in result.stdout + result.stderr


def test_dry_run_lists_one_job_per_part_split_and_run(workflow):
    result = snakemake(workflow, "-n")
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout) == {
        "partition": 1,
        "scan": 3,
        "metadata": 1,
        "windows": 3,
        "merge": 3,
        "run_config": 1,
        "train": 1,
        "infer": 2,
        "all": 1,
        "total": 16,
    }


def test_slurm_profile_dry_run_asks_a_gpu_for_training(workflow):
    result = snakemake(workflow, "--profile", "workflow/profiles/slurm", "-n")
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout)["train"] == 1
    train = result.stdout.split("rule train:")[1].split("\n\n")[0]
    assert "gpu=1" in train and "slurm_partition=gpu" in train, train


@pytest.mark.parametrize(
    "gpus, launch",
    [(1, "python -m sequifier train"), (2, "torchrun --standalone --nproc_per_node=2 -m sequifier train")],
)
def test_gpu_resource_picks_the_device_and_the_launcher(workflow, gpus, launch):
    result = snakemake(workflow, "-n", "--set-resources", f"train:gpu={gpus}")
    assert result.returncode == 0, result.stderr
    command = result.stdout.split("rule train:")[1].split("Shell command:")[1].splitlines()[0]
    assert f"{launch} --config-path results/example/runs/default/train.yaml" in command, command
    assert "--set training_spec.device=cuda" in command, command


def test_workflow_matches_the_cli(built, tmp_path):
    results = built / "results" / "example"
    assert not (results / "preprocess-work").exists(), "intermediate files are removed"
    for rule in ("partition", "scan", "metadata", "windows", "merge", "run_config", "train", "infer"):
        assert any((built / "logs" / "example" / rule).iterdir()), f"{rule} has a log"

    run_cli(
        "preprocess",
        "--config-path",
        built / "config" / "preprocess.yaml",
        "--project-root",
        built,
        "--output-path",
        tmp_path,
        "--metadata-config-path",
        tmp_path / "metadata.json",
        "--n-cores",
        "1",
        cwd=built,
        check=True,
    )
    for k in range(3):
        name = f"example-split{k}.parquet"
        assert (results / "data" / name).read_bytes() == (tmp_path / name).read_bytes()
    from_workflow = json.loads((results / "metadata.json").read_text())
    from_cli = json.loads((tmp_path / "metadata.json").read_text())
    differing = {key for key in from_cli if from_cli[key] != from_workflow[key]}
    assert differing == {"split_paths", "preprocess_config"}
    assert from_workflow["split_paths"][0] == "results/example/data/example-split0.parquet"


def test_workflow_trains_the_example_model(built):
    run = built / RUN
    resolved = yaml.safe_load((run / "train.yaml").read_text())
    assert resolved["model_name"] == "default"
    assert resolved["metadata_config_path"] == "results/example/metadata.json"
    assert resolved["models_path"] == "results/example/runs/default/models"
    wandb = {key: resolved["wandb"][key] for key in ("project", "group", "name")}
    assert wandb == {"project": "sequifier", "group": "example", "name": "default"}
    epochs = yaml.safe_load((built / "config" / "train.yaml").read_text())["training_spec"]["epochs"]
    assert [int(row["epoch"]) for row in metrics(built)] == list(range(1, epochs + 1))
    assert all(float(row["validation_loss"]) > 0 for row in metrics(built))
    models = sorted(path.name for path in (run / "models").glob("sequifier-*"))
    assert models == sorted(
        f"sequifier-default-{label}{kind}-{epochs}.{suffix}"
        for label in ("best", "last")
        for kind in ("", "-embedding")
        for suffix in ("pt", "onnx")
    )
    assert (run / "checkpoints" / f"sequifier-default-epoch-{epochs}.pt").is_file()
    assert "training default" in (built / "logs" / "example" / "train" / "default.log").read_text()


def test_workflow_infers_with_the_best_model_of_each_run(built, tmp_path):
    infer = built / RUN / "infer"
    files = sorted(p.relative_to(infer).as_posix() for p in infer.rglob("sequifier-*"))
    assert files == [
        "embeddings/embeddings/sequifier-default-best-embeddings.parquet",
        "predictions/predictions/sequifier-default-best-predictions.csv",
        "predictions/probabilities/sequifier-default-best-itemId-probabilities.csv",
    ]
    (best,) = (built / RUN / "models").glob("sequifier-default-best-[0-9]*.pt")
    run_cli(
        "infer", "--config-path", "config/infer.yaml", "--model-path", best.relative_to(built),
        "--metadata-config-path", "results/example/metadata.json", "--output-path", tmp_path,
        cwd=built, check=True,
    )  # fmt: skip
    for name in files[1:]:
        ours = tmp_path / name.split("/", 1)[1]
        assert (infer / name).read_bytes() == ours.read_bytes(), name
    windows = json.loads((built / "results/example/metadata.json").read_text())["n_windows"]["test"]
    with open(infer / files[1]) as handle:
        assert sum(1 for _ in handle) == windows + 1


def test_rerun_is_a_no_op(built):
    again = snakemake(built, "--cores", "2")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_changed_config_trains_afresh_and_an_interrupted_run_resumes(built, tmp_path):
    root = copy_of(built, tmp_path)
    path = root / "config" / "train.yaml"
    train = yaml.safe_load(path.read_text())
    train["training_spec"]["epochs"] = 2
    train["export_onnx"] = False
    path.write_text(yaml.safe_dump(train))
    dry = snakemake(root, "-n")
    assert dry.returncode == 0, dry.stderr
    assert job_counts(dry.stdout) == {"run_config": 1, "train": 1, "infer": 2, "all": 1, "total": 5}

    # Ctrl-C once the first checkpoint of the new run is written (its stamp is in place).
    checkpoints, log = root / RUN / "checkpoints", root / "logs" / "example" / "train" / "default.log"
    started = snakemake(root, "--cores", "2", wait=False)
    deadline = time.monotonic() + 120
    while not (
        (checkpoints / "inputs.cksum").exists() and (checkpoints / "sequifier-default-epoch-1.pt").exists()
    ):
        assert started.poll() is None and time.monotonic() < deadline, started.communicate()
        time.sleep(0.1)
    os.killpg(started.pid, signal.SIGINT)
    assert started.wait(timeout=120) != 0
    assert not (root / RUN / "metrics.csv").exists(), "an interrupted run leaves no complete output"
    assert "resuming" not in log.read_text(), "the changed config trained from scratch"

    again = snakemake(root, "--cores", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in log.read_text()
    assert [row["epoch"] for row in metrics(root)] == ["1", "2"]
    assert not list((root / RUN / "models").glob("*.onnx"))
    assert not (checkpoints / "inputs.cksum").exists(), "a finished run is not resumed"


def stub(folder, name, calls, body=""):
    path = folder / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n{body}\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_slurm_submits_training_with_its_gpu_memory_and_time(built, tmp_path):
    root = copy_of(built, tmp_path)
    stubs, calls = tmp_path / "bin", tmp_path / "calls.txt"
    stubs.mkdir()
    for name in ("sacctmgr", "sshare", "squeue", "sacct", "scontrol", "sinfo"):
        stub(stubs, name, calls)
    stub(stubs, "sbatch", calls, 'echo "sbatch: error: stub, nothing submitted" >&2; exit 1')

    profile = ["--profile", "workflow/profiles/slurm", "--slurm-init-seconds-before-status-checks", "1"]
    result = snakemake(root, *profile, "--forcerun", "train", path=stubs)
    assert result.returncode != 0  # the stub refuses the job once it has recorded it
    submitted = [line for line in calls.read_text().splitlines() if line.startswith("sbatch ")]
    assert len(submitted) == 1 and "rule_train_wildcards_default" in submitted[0], calls.read_text()
    profile = yaml.safe_load((root / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    train = profile["set-resources"]["train"]
    flags = submitted[0].split(" --wrap=")[0].split()
    for flag in (f"--gpus={train['gpu']}", f"--cpus-per-gpu={train['cpus_per_gpu']}", "--nodes=1"):
        assert flag in flags, submitted[0]
    pairs = set(zip(flags, flags[1:]))
    for flag, value in (
        ("--mem", train["mem_mb"]),
        ("-t", train["runtime"]),
        ("-p", train["slurm_partition"]),
    ):
        assert (flag, str(value)) in pairs, submitted[0]
