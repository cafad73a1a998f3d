"""The README's set-up and reference stay true."""

from conftest import REPO

from sequifier.reference import with_reference


def test_config_reference_matches_the_schemas():
    text = (REPO / "README.md").read_text()
    assert text == with_reference(text), "run: python -m sequifier.reference README.md"


def test_ci_runs_the_readme_test_command():
    readme, ci = (REPO / "README.md").read_text(), (REPO / ".ci" / "run").read_text()
    assert "python -m pytest -q" in readme and "python -m pytest -q" in ci
    assert (
        'pip install "torch==2.13.0" -e ".[dev]"' in readme
        and 'pip install "torch==2.13.0" -e ".[dev]"' in ci
    )
