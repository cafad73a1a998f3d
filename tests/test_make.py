"""`sequifier make` scaffolds a project whose configs run unedited."""

import pandas as pd
import pytest
import yaml
from conftest import REPO, run_cli

from sequifier import config
from sequifier.make import TEMPLATES, example_table


def test_make_then_preprocess_runs_unedited(tmp_path):
    run_cli("make", "demo", cwd=tmp_path, check=True)
    project = tmp_path / "demo"
    assert sorted(p.name for p in (project / "configs").iterdir()) == sorted(TEMPLATES)
    assert all((project / d).is_dir() for d in ("data", "outputs", "logs"))
    for template in TEMPLATES:
        assert "PLEASE FILL" not in (project / "configs" / template).read_text()
    result = run_cli("preprocess", cwd=project, check=True)
    assert "preprocessed 8,898 rows, 200 sequences" in result.stderr
    metadata = yaml.safe_load((project / "configs" / "metadata_configs" / "example.json").read_text())
    for path in metadata["split_paths"]:
        assert len(pd.read_parquet(project / path)) > 0
    assert metadata["n_classes"] == {"itemId": 8}


def test_make_refuses_an_existing_folder(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    result = run_cli("make", "taken", cwd=tmp_path)
    assert result.returncode == 2 and "taken: already exists" in result.stderr
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("stage", config.STAGES)
def test_stage_templates_validate(stage):
    from importlib import resources

    text = (resources.files("sequifier") / "templates" / f"{stage}.yaml").read_text()
    config.resolve(stage, yaml.safe_load(text), f"templates/{stage}.yaml")


def test_bundled_example_is_the_example_generator_output():
    bundled = pd.read_csv(REPO / "resources" / "example.csv")
    pd.testing.assert_frame_equal(bundled, example_table())
