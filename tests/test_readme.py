"""The README's set-up and reference stay true."""

import csv
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, made_project, run_cli


def reference_tool():
    """scripts/reference.py, the README's reference generator (a development tool, not in the package)."""
    spec = importlib.util.spec_from_file_location("reference", REPO / "scripts" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_matches_the_schemas():
    text = (REPO / "README.md").read_text()
    assert text == reference_tool().with_reference(text, REPO), "run: python scripts/reference.py README.md"


def test_ci_runs_the_readme_test_command():
    readme, ci = (REPO / "README.md").read_text(), (REPO / ".ci" / "run").read_text()
    command = "python -m pytest -q -n 2"
    assert f"&& {command}\n" in readme and f"\n{command}\n" in ci
    assert (
        'pip install "torch==2.13.0" -e ".[dev]"' in readme
        and 'pip install "torch==2.13.0" -e ".[dev]"' in ci
    )


def console_commands() -> list[str]:
    """The README's console commands ("$ ..." lines), without their comments, in order."""
    text = (REPO / "README.md").read_text()
    return [line[2:].split("  #")[0].strip() for line in text.splitlines() if line.startswith("$ ")]


BIN = Path(sys.executable).parent
WORKFLOW_COMMANDS = {  # run by tests/test_workflow.py on a copy of the repository's workflow
    "snakemake --cores 2": "the built fixture",
    "snakemake --report results/example/report.html": "test_the_report_holds_the_leaderboard_and_the_curves",
}


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(tmp_path):
    """Every sequifier command of the README, in order, in a new folder (W&B disabled for speed)."""
    commands = console_commands()
    assert {c for c in commands if c.startswith("snakemake")} == set(WORKFLOW_COMMANDS)
    walkthrough = [c for c in commands if not c.startswith("snakemake")]
    assert walkthrough[:3] == ["sequifier make demo", "cd demo", "sequifier preprocess"]
    steps = [c.split()[1] if c.startswith("sequifier") else c.split()[0] for c in walkthrough[3:]]
    assert steps == ["train", "torchrun", "infer", "hyperparameter-search"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    cwd = tmp_path
    for command in walkthrough:
        program, *args = shlex.split(command)
        if program == "cd":
            cwd = cwd / args[0]
            continue
        if program == "torchrun":  # the DDP launch: 2 processes with gloo
            result = subprocess.run(
                [str(BIN / "torchrun"), *args], cwd=cwd, env=env, capture_output=True, text=True
            )
            assert result.returncode == 0, result.stderr[-3000:]
            continue
        assert program == "sequifier", command
        run_cli(*args, cwd=cwd, check=True, env=env)
    outputs = cwd / "outputs"
    assert (outputs / "predictions/sequifier-default-best-predictions.csv").is_file()
    with open(outputs / "hyperparameter-search/example/leaderboard.csv") as handle:
        assert [row["status"] for row in csv.DictReader(handle)] == ["done"] * 4


def python_blocks() -> list[str]:
    """The README's Python examples (```python blocks)."""
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_the_python_examples_run(tmp_path):
    """Each Python example, as a script in the walkthrough's project."""
    project = made_project(tmp_path)
    assert python_blocks(), "the README has Python examples"
    for i, code in enumerate(python_blocks()):
        script = project / f"example_{i}.py"
        script.write_text(code)
        result = subprocess.run([sys.executable, script.name], cwd=project, capture_output=True, text=True)
        assert result.returncode == 0, f"example {i}:\n{code}\n{result.stderr[-3000:]}"


def test_the_python_functions_the_readme_names_exist():
    """`sequifier.x.y(...)` in the text: importable and callable."""
    names = set(re.findall(r"`(sequifier(?:\.\w+)+)\(", (REPO / "README.md").read_text()))
    assert {"sequifier.train.run", "sequifier.infer.run", "sequifier.model.export.load_bundle"} <= names
    for name in names:
        module, _, attribute = name.rpartition(".")
        assert callable(getattr(importlib.import_module(module), attribute)), name
