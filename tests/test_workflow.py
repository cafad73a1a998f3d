"""The Snakemake workflow: lint, dry runs, a real run that matches the CLI and trains the example
model, a no-op re-run, a changed train config that trains afresh, an interrupted training that
resumes, and runs on the local SLURM cluster (scripts/slurm-cluster): the example, what a train job
with two GPUs is granted, and what the slurm profile as shipped asks for."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import slurm_cluster
import torch
import yaml
from conftest import REPO, run_cli

from sequifier.files import content_hash
from sequifier.model.export import read_bundle

BIN = Path(sys.executable).parent
RUNS = ("dim_model-16", "dim_model-32")  # the grid of config/config.yaml
RUN = Path("results/example/runs/dim_model-16")


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


def metrics(root, run=RUN.name, baselines=False):
    """The rows of a run's metrics CSV: the model's (from epoch 0, untrained), or also the baselines'."""
    with open(root / "results/example/runs" / run / "metrics.csv") as handle:
        return [row for row in csv.DictReader(handle) if baselines or not row["kind"].startswith("baseline")]


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
        "run_config": 2,
        "train": 2,
        "leaderboard": 1,
        "infer": 2,
        "all": 1,
        "total": 19,
    }


def test_slurm_profile_dry_run_asks_a_gpu_for_training(workflow):
    result = snakemake(workflow, "--profile", "workflow/profiles/slurm", "-n")
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout)["train"] == 2
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
    assert f"{launch} --config-path results/example/runs/dim_model-" in command, command
    assert "--set training_spec.device=cuda" in command, command


def test_nodes_resource_launches_a_torchrun_per_node(workflow):
    result = snakemake(workflow, "-n", "--set-resources", "train:gpu=4", "train:nodes=2")
    assert result.returncode == 0, result.stderr
    command = result.stdout.split("rule train:")[1].split("Shell command:")[1].splitlines()[0]
    launch = (
        "-m sequifier train-launch --nodes=2 --processes=2 -- --config-path results/example/runs/"  # 2 a node
    )
    assert launch in command and "--set training_spec.device=cuda" in command, command


def test_workflow_matches_the_cli(built, tmp_path):
    results = built / "results" / "example"
    assert not (results / "preprocess-work").exists(), "intermediate files are removed"
    for rule in (
        "partition",
        "scan",
        "metadata",
        "windows",
        "merge",
        "run_config",
        "train",
        "leaderboard",
        "infer",
    ):
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


@pytest.mark.parametrize("name, width", [("dim_model-16", 16), ("dim_model-32", 32)])
def test_workflow_trains_a_run_per_point_of_the_grid(built, name, width):
    run = built / "results/example/runs" / name
    resolved = yaml.safe_load((run / "train.yaml").read_text())
    assert resolved["model_name"] == name and resolved["model_spec"]["dim_model"] == width
    assert resolved["metadata_config_path"] == "results/example/metadata.json"
    assert resolved["models_path"] == f"results/example/runs/{name}/models"
    wandb = {key: resolved["wandb"][key] for key in ("project", "group", "name", "tags")}
    assert wandb == {"project": "sequifier", "group": "example", "name": name, "tags": [f"dim_model={width}"]}
    epochs = yaml.safe_load((built / "config" / "train.yaml").read_text())["training_spec"]["epochs"]
    rows = metrics(built, name)
    assert [int(row["epoch"]) for row in rows] == list(range(0, epochs + 1))
    assert all(float(row["validation_loss"]) > 0 for row in rows)
    models = sorted(path.name for path in (run / "models").glob("sequifier-*"))
    assert models == sorted(
        f"sequifier-{name}-{label}{kind}-{epochs}.{suffix}"
        for label in ("best", "last")
        for kind in ("", "-embedding")
        for suffix in ("pt", "onnx")
    )
    assert (run / "checkpoints" / f"sequifier-{name}-epoch-{epochs}.pt").is_file()
    assert f"training {name}" in (built / "logs" / "example" / "train" / f"{name}.log").read_text()
    assert json.loads((run / "status.json").read_text())["status"] == "done"


def leaderboard(root):
    with open(root / "results/example/leaderboard.csv") as handle:
        return list(csv.DictReader(handle))


def test_the_leaderboard_ranks_the_runs_by_their_metrics(built):
    rows = leaderboard(built)
    assert sorted(row["run"] for row in rows) == list(RUNS) and [row["rank"] for row in rows] == ["1", "2"]
    for row in rows:
        found = metrics(built, row["run"], baselines=True)
        trained = [m for m in found if m["kind"] == "epoch" and m["epoch"] != "0"]
        best = min(trained, key=lambda m: float(m["validation_loss"]))
        (baseline,) = [m for m in found if m["kind"] == "baseline_best"]
        assert float(row["best_validation_loss"]) == float(best["validation_loss"])
        assert float(row["baseline_loss"]) == float(baseline["validation_loss"]) > 0
        assert float(row["best_validation_loss_price"]) == float(best["validation_loss_price"])
        assert row["best_epoch"] == best["epoch"] and row["status"] == "done"
        assert row["model_spec.dim_model"] == row["run"].split("-")[1]
    assert float(rows[0]["best_validation_loss"]) <= float(rows[1]["best_validation_loss"])
    small, large = sorted(rows, key=lambda row: int(row["model_spec.dim_model"]))
    assert int(small["parameters"]) < int(large["parameters"])
    assert (built / "results/example/curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(built / "results/example/runs.csv") as handle:
        assert list(csv.DictReader(handle)) == [
            {"run": run, "model_spec.dim_model": run.split("-")[1]} for run in RUNS
        ]


def test_workflow_infers_with_the_best_run(built, tmp_path):
    best = leaderboard(built)[0]["run"]
    infer = built / "results/example/infer/best"
    files = sorted(p.relative_to(infer).as_posix() for p in infer.rglob("sequifier-*"))
    assert files == [
        f"embeddings/embeddings/sequifier-{best}-best-embeddings.parquet",
        f"predictions/predictions/sequifier-{best}-best-predictions.csv",
        f"predictions/probabilities/sequifier-{best}-best-itemId-probabilities.csv",
    ]
    (model,) = (built / "results/example/runs" / best / "models").glob(f"sequifier-{best}-best-[0-9]*.pt")
    run_cli(
        "infer", "--config-path", "config/infer.yaml", "--model-path", model.relative_to(built),
        "--metadata-config-path", "results/example/metadata.json", "--output-path", tmp_path,
        cwd=built, check=True,
    )  # fmt: skip
    for name in files[1:]:
        ours = tmp_path / name.split("/", 1)[1]
        assert (infer / name).read_bytes() == ours.read_bytes(), name
    windows = json.loads((built / "results/example/metadata.json").read_text())["n_windows"]["test"]
    with open(infer / files[1]) as handle:
        assert sum(1 for _ in handle) == windows + 1


def test_the_report_holds_the_leaderboard_and_the_curves(built):
    result = snakemake(built, "--report", "results/example/report.html")
    assert result.returncode == 0, result.stderr
    assert "Adding leaderboard.csv" in result.stderr and "Adding curves.png" in result.stderr
    assert (built / "results/example/report.html").stat().st_size > 10_000


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
    assert job_counts(dry.stdout) == {
        "run_config": 2, "train": 2, "leaderboard": 1, "infer": 2, "all": 1, "total": 8
    }  # fmt: skip

    # Ctrl-C once the first checkpoint of the new run is written (its stamp is in place).
    checkpoints, log = root / RUN / "checkpoints", root / "logs" / "example" / "train" / f"{RUN.name}.log"
    started = snakemake(root, "--cores", "2", wait=False)
    deadline = time.monotonic() + 120
    while not (
        (checkpoints / "inputs.cksum").exists()
        and (checkpoints / f"sequifier-{RUN.name}-epoch-1.pt").exists()
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
    assert [row["epoch"] for row in metrics(root)] == ["0", "1", "2"]
    assert not list((root / RUN / "models").glob("*.onnx"))
    assert not (checkpoints / "inputs.cksum").exists(), "a finished run is not resumed"


def search_space(root, space):
    path = root / "config" / "config.yaml"
    experiment = yaml.safe_load(path.read_text())
    experiment["search"]["space"] = space
    path.write_text(yaml.safe_dump(experiment))


def test_a_new_grid_value_runs_only_its_jobs(built, tmp_path):
    root = copy_of(built, tmp_path)
    search_space(root, {"model_spec.dim_model": [16, 32, 48]})
    dry = snakemake(root, "-n")
    assert dry.returncode == 0, dry.stderr
    assert job_counts(dry.stdout) == {
        "run_config": 1, "train": 1, "leaderboard": 1, "infer": 2, "all": 1, "total": 6
    }  # fmt: skip
    assert "wildcards: run=dim_model-48" in dry.stdout


def test_a_sampled_space_and_inference_of_every_run(workflow, tmp_path):
    root = copy_of(workflow, tmp_path)
    path = root / "config" / "config.yaml"
    experiment = yaml.safe_load(path.read_text())
    rates = {"low": 0.0001, "high": 0.01, "log": True}
    experiment["search"] = {
        "strategy": "sample",
        "n_samples": 3,
        "space": {"training_spec.learning_rate": rates},
    }
    experiment["infer_runs"] = "all"
    path.write_text(yaml.safe_dump(experiment))
    dry = snakemake(root, "-n")
    assert dry.returncode == 0, dry.stderr
    counts = job_counts(dry.stdout)
    assert (counts["train"], counts["infer"]) == (3, 6)  # 3 runs x 2 infer configs
    again = snakemake(root, "-n")
    runs = lambda output: sorted(set(re.findall(r"run=(learning_rate-[0-9.e-]+)", output)))  # noqa: E731
    assert runs(dry.stdout) == runs(again.stdout) and len(runs(dry.stdout)) == 3  # stable ids


def test_a_bad_search_space_stops_the_workflow_before_any_job(workflow, tmp_path):
    root = copy_of(workflow, tmp_path)
    search_space(root, {"model_spec.dim_modle": [8]})
    dry = snakemake(root, "-n")
    assert dry.returncode != 0
    assert "model_spec.dim_modle: unknown key (did you mean 'dim_model'?)" in dry.stderr + dry.stdout


def test_a_key_given_twice_in_the_workflow_config_stops_it_before_any_job(workflow, tmp_path):
    root = copy_of(workflow, tmp_path)
    path = root / "config" / "config.yaml"
    path.write_text(path.read_text() + "partitions: 5\n")
    dry = snakemake(root, "-n")
    assert dry.returncode != 0
    assert re.search(
        r"config/config.yaml: key 'partitions' is given twice, on line \d+ and on line \d+",
        dry.stderr + dry.stdout,
    )


def test_a_failed_run_is_marked_failed_and_the_others_go_on(built, tmp_path):
    root = copy_of(built, tmp_path)
    search_space(root, {"model_spec.n_head": [4, 3]})  # dim_model 32: 3 heads cannot train
    experiment = yaml.safe_load((root / "config/config.yaml").read_text())
    experiment["infer_runs"] = "all"  # the failed run's inference stops nothing either
    (root / "config/config.yaml").write_text(yaml.safe_dump(experiment))
    result = snakemake(root, "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["run"]: row for row in leaderboard(root)}
    assert rows["n_head-4"]["status"] == "done" and rows["n_head-4"]["rank"] == "1"
    assert rows["n_head-3"]["status"] == "failed" and rows["n_head-3"]["rank"] == ""
    status = json.loads((root / "results/example/runs/n_head-3/status.json").read_text())
    assert status["status"] == "failed" and status["exit_code"] == 2
    log = (root / "logs/example/train/n_head-3.log").read_text()
    assert "model_spec.n_head: 3 does not divide model_spec.dim_model (32)" in log
    assert list((root / "results/example/infer/n_head-4").rglob("sequifier-n_head-4-best-predictions.csv"))
    assert not list((root / "results/example/infer/n_head-3").rglob("sequifier-*"))
    assert "nothing to infer" in (root / "logs/example/infer/n_head-3-predictions.log").read_text()


def write_yaml(path, values):
    path.write_text(yaml.safe_dump(values, sort_keys=False))


def test_a_fine_tuning_starts_from_init_from_and_trains_again_when_that_model_changes(built, tmp_path):
    """A masked run with frozen blocks from a pretrained model (an input of its train job, in its
    stamp), filled in by infer configs with mask_positions, argmax or drawn (temperature, top_k,
    top_p); a new pretrained model trains the run again."""
    root = copy_of(built, tmp_path)
    (pretrained,) = (root / RUN / "models").glob(f"sequifier-{RUN.name}-best-[0-9]*.pt")
    (root / "pretrained").mkdir()
    shutil.copy(pretrained, root / "pretrained/base.pt")
    train = yaml.safe_load((root / "config/train.yaml").read_text())
    train |= {"init_from": "pretrained/base.pt", "objective": "masked", "export_onnx": False}
    train["training_spec"] |= {"epochs": 1, "freeze": ["blocks"]}
    write_yaml(root / "config/train.yaml", train)
    experiment = yaml.safe_load((root / "config/config.yaml").read_text())
    experiment["search"]["space"] = {"model_spec.dim_model": [16]}
    fill = {"model_type": "generative", "write_format": "csv", "mask_positions": [-2], "seed": 3}
    sampled = {**fill, "sample_from_distribution_columns": ["itemId"], "temperature": 3.0}
    configs = {"filled": fill, "top1": {**sampled, "top_k": 1}, "drawn": {**sampled, "top_p": 0.95}}
    for name, values in configs.items():
        write_yaml(root / f"config/{name}.yaml", values)
    experiment["infer"] = {name: f"config/{name}.yaml" for name in configs}
    write_yaml(root / "config/config.yaml", experiment)
    result = snakemake(root, "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]

    log = (root / "logs/example/train" / f"{RUN.name}.log").read_text()
    assert "init_from pretrained/base.pt: the weights of the model taken" in log and "frozen: blocks" in log
    (tuned,) = (root / RUN / "models").glob(f"sequifier-{RUN.name}-best-[0-9]*.pt")
    tuned_bundle, base = read_bundle(tuned), read_bundle(root / "pretrained/base.pt")["state_dict"]
    assert tuned_bundle["model_args"]["objective"] == "masked"
    blocks = [key for key in base if key.startswith("blocks.")]
    assert blocks and all(torch.equal(tuned_bundle["state_dict"][key], base[key]) for key in blocks)
    read = lambda name: pd.read_csv(  # noqa: E731
        root
        / "results/example/infer/best"
        / name
        / "predictions"
        / f"sequifier-{RUN.name}-best-predictions.csv"
    )
    filled, data = read("filled"), pd.read_csv(root / "resources/example.csv")
    last = filled.groupby("sequenceId").itemPosition.max()  # the item before each window's last
    assert len(filled) and (last < data.groupby("sequenceId").itemPosition.max()[last.index]).all()
    pd.testing.assert_frame_equal(read("top1"), filled)  # top_k 1 at temperature 3: the argmax
    assert (read("drawn").itemId != filled.itemId).mean() > 0.1  # drawn: not the argmax
    status = json.loads((root / RUN / "status.json").read_text())
    inputs = [root / RUN / "train.yaml", root / "results/example/metadata.json", root / "pretrained/base.pt"]
    assert status["inputs"] == f"{content_hash(inputs)} gpus=0"  # the stamp covers the model

    assert "Nothing to be done" in snakemake(root, "-n").stdout
    shutil.copy(tuned, root / "pretrained/base.pt")  # another model of the same structure
    dry = snakemake(root, "-n")
    assert dry.returncode == 0 and job_counts(dry.stdout)["train"] == 1, dry.stdout[-3000:]
    assert re.search(r"reason: Updated input files: [^\n]*pretrained/base.pt", dry.stdout), dry.stdout


@pytest.mark.parametrize(
    "config, line, expected",
    [
        (
            "train.yaml",
            "init_from: pretrained/missing.pt",
            "config/train.yaml: init_from: 'pretrained/missing.pt': not a file",
        ),
        (  # a model in a run's folder, which Snakemake empties before it trains the run again
            "train.yaml",
            f"init_from: {RUN}/models/sequifier-{RUN.name}-best-3.pt",
            f"{RUN}/models/sequifier-{RUN.name}-best-3.pt' is in results/example/runs, the runs' outputs",
        ),
        ("infer.yaml", "top_p: 1.5", "top_p: 1.5 is not valid"),
        ("infer.yaml", "top_k: 3", "top_k: 3, but sample_from_distribution_columns is empty"),
    ],
)
def test_a_bad_init_from_model_or_infer_setting_stops_the_workflow_before_any_job(
    built, tmp_path, config, line, expected
):
    root = copy_of(built, tmp_path)
    path = root / "config" / config
    path.write_text(path.read_text() + f"{line}\n")
    dry = snakemake(root, "-n")
    assert dry.returncode != 0 and "Traceback" not in dry.stdout + dry.stderr
    assert expected in dry.stdout + dry.stderr and f"config/{config}" in dry.stdout + dry.stderr
    assert not job_counts(dry.stdout), "no job is listed"


def slurm_jobs(root):
    """{SLURM job id: rule} of the jobs the workflow in root submitted, as the cluster knows them."""
    jobs = slurm_cluster.jobs_of(root)
    return {job: comment.removeprefix("rule_").split("_wildcards")[0] for job, (comment, _) in jobs.items()}


def job_request(job_id):
    """What SLURM granted a job (scontrol show job): {key: value}."""
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True)
    return dict(pair.split("=", 1) for pair in shown.stdout.split() if "=" in pair)


@pytest.mark.slurm
@pytest.mark.slow
def test_the_example_runs_on_the_slurm_cluster_with_the_results_of_a_local_run(built, tmp_path):
    root = copy_of(built, tmp_path)
    for name in ("results", "logs", ".snakemake"):
        shutil.rmtree(root / name)
    started = time.monotonic()
    result = snakemake(root, *slurm_cluster.cluster_profile(root))
    wall = time.monotonic() - started
    submitted = slurm_jobs(root)
    slurm_cluster.cancel(*submitted)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr
    counts = job_counts("Job stats:" + output.split("Job stats:")[1].split("\n\n")[0])  # the plan
    local = {"all", "run_config", "leaderboard"}  # local rules: not submitted
    assert sorted(submitted.values()) == sorted(
        rule for rule, count in counts.items() if rule not in local and rule != "total" for _ in range(count)
    ), (counts, submitted)
    assert list(submitted.values()).count("train") == len(RUNS)
    states = {job: state for job, (_, state) in slurm_cluster.jobs_of(root).items()}
    assert states == {job: "COMPLETED" for job in submitted}
    for job, rule in submitted.items():
        if rule == "train":
            request = job_request(job)
            assert (request["NumCPUs"], request["NumTasks"], request["Partition"]) == ("1", "1", "cpu")
    ours, local_rows = leaderboard(root), leaderboard(built)
    assert [row["run"] for row in ours] == [row["run"] for row in local_rows]
    for row, local_row in zip(ours, local_rows):
        assert row["status"] == local_row["status"] == "done"
        loss, local_loss = float(row["best_validation_loss"]), float(local_row["best_validation_loss"])
        assert loss == pytest.approx(local_loss, rel=1e-4)
    print(f"the example on the SLURM cluster: {len(submitted)} jobs in {wall:.0f} s")


@pytest.mark.slurm
def test_a_train_job_with_two_gpus_asks_slurm_for_them_as_one_task(built, tmp_path):
    root = copy_of(built, tmp_path)
    profile = slurm_cluster.cluster_profile(root, slurm_partition="gpu", gpu=2)
    result = snakemake(root, str(RUN / "status.json"), *profile, "--forcerun", "train")
    submitted = slurm_jobs(root)
    slurm_cluster.cancel(*submitted)
    assert list(submitted.values()) == ["train"], result.stdout[-3000:] + result.stderr[-3000:]
    request = job_request(next(iter(submitted)))
    # --gpus=2, one task (torchrun starts a process per GPU), cpus_per_gpu x 2 CPUs, and memory per CPU
    assert request["TresPerJob"] == "gres:gpu:2" and request["CpusPerTres"] == "gres:gpu:1", request
    assert (request["NumTasks"], request["NumCPUs"], request["Partition"]) == ("1", "2", "gpu"), request
    assert request["MinMemoryCPU"] == "1000M", request
    # granted, the job trains on cuda (which this machine's torch cannot: the GPUs are device files)
    log = (root / "logs/example/train/dim_model-16.log").read_text()
    assert "training_spec.device: 'cuda', but torch finds no CUDA GPU" in log, log


@pytest.mark.slurm
def test_the_slurm_profile_asks_for_cpus_and_memory_per_gpu_and_one_task(built, tmp_path):
    """The profile as shipped (the tests above change its cluster values): its GPU request, whether
    the cluster can grant it or not (8 CPUs per GPU: more than the local nodes have)."""
    root = copy_of(built, tmp_path)
    fast = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1"]
    profile = ["--profile", "workflow/profiles/slurm", *fast, "--verbose"]
    result = snakemake(root, str(RUN / "status.json"), *profile, "--forcerun", "train")
    slurm_cluster.cancel(*slurm_jobs(root))
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "sbatch --parsable" in line]
    calls = {tuple(line.split("sbatch --parsable", 1)[1].split(" --wrap=")[0].split()) for line in lines}
    assert len(calls) == 1, calls  # logged twice when the cluster refuses the job: the same call
    flags = list(calls.pop())
    assert "rule_train_wildcards_dim_model-16" in flags, flags
    settings = yaml.safe_load((root / "workflow/profiles/slurm/config.yaml").read_text())
    train, defaults = settings["set-resources"]["train"], settings["default-resources"]
    for flag in (f"--gpus={train['gpu']}", f"--cpus-per-gpu={defaults['cpus_per_gpu']}", "--nodes=1"):
        assert flag in flags, flags
    pairs = set(zip(flags, flags[1:]))
    for flag, value in (("--mem-per-cpu", defaults["mem_mb_per_cpu"]), ("-t", train["runtime"])):
        assert (flag, str(value)) in pairs, flags
    assert ("-p", train["slurm_partition"]) in pairs, flags
    # one task: torchrun starts the processes (no --ntasks-per-gpu, which would run the job per GPU)
    assert not [flag for flag in flags if flag.startswith(("--ntasks", "--cpus-per-task"))], flags
