"""The Snakemake workflow: lint, dry run, a real run that matches the CLI, and a no-op re-run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_cli

BIN = Path(sys.executable).parent


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


def snakemake(root, *args):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=root, env=env, capture_output=True, text=True)


def test_lint_is_clean(workflow):
    result = snakemake(workflow, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition" in result.stdout + result.stderr


def test_dry_run_lists_one_job_per_part_and_split(workflow):
    result = snakemake(workflow, "-n")
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("Job stats:")[-1].split("Reasons:")[0]
    counts = {
        line.split()[0]: int(line.split()[1])
        for line in table.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    assert counts == {
        "partition": 1,
        "scan": 3,
        "metadata": 1,
        "windows": 3,
        "merge": 3,
        "all": 1,
        "total": 12,
    }


def test_workflow_matches_the_cli_and_reruns_nothing(workflow, tmp_path):
    result = snakemake(workflow, "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    results = workflow / "results" / "example"
    assert not (results / "preprocess-work").exists(), "intermediate files are removed"
    for rule in ("partition", "scan", "metadata", "windows", "merge"):
        assert any((workflow / "logs" / "example" / rule).iterdir()), f"{rule} has a log"

    run_cli(
        "preprocess",
        "--config-path",
        workflow / "config" / "preprocess.yaml",
        "--project-root",
        workflow,
        "--output-path",
        tmp_path,
        "--metadata-config-path",
        tmp_path / "metadata.json",
        "--n-cores",
        "1",
        cwd=workflow,
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

    again = snakemake(workflow, "--cores", "2")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
