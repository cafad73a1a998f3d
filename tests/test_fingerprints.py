"""Windows tied to the metadata they were written with (through the CLI): every window file carries
the metadata's fingerprint, training and inference refuse windows of other metadata, and
preprocess refuses to replace the outputs of another input with the same name."""

import json
import shutil

import pandas as pd
import pytest
import yaml
from conftest import run_cli, sequences_table


def _preprocess_config(root) -> None:
    config = {"project_root": ".", "data_path": "data/table.csv", "seq_length": 4, "n_cores": 1}
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "configs/preprocess.yaml").write_text(
        "".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items())
    )


def _train(root, *flags):
    return run_cli(
        "train", *flags, "--set", "training_spec.epochs=1", "--set", "wandb.mode=disabled", cwd=root
    )


def _refused(result, *parts) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for part in parts:
        assert part in result.stderr, (part, result.stderr)
    return result.stderr


@pytest.fixture
def small(tmp_path):
    """A project with a small table."""
    root = tmp_path / "p"
    (root / "data").mkdir(parents=True)
    sequences_table(n_sequences=12, min_length=6, max_length=12).to_csv(root / "data/table.csv", index=False)
    return root


@pytest.fixture
def demo(tmp_path):
    """The walkthrough's project, not yet preprocessed."""
    run_cli("make", "demo", cwd=tmp_path, check=True)
    return tmp_path / "demo"


@pytest.mark.parametrize("fmt, merged", [("parquet", True), ("csv", True), ("pt", False), ("csv", False)])
def test_windows_of_other_metadata_are_refused_in_training(demo, fmt, merged):
    config = yaml.safe_load((demo / "configs/preprocess.yaml").read_text())
    config.update(write_format=fmt, merge_output=merged, n_cores=1)
    (demo / "configs/preprocess.yaml").write_text(yaml.safe_dump(config))
    flags = []
    assert run_cli("preprocess", *flags, cwd=demo).returncode == 0
    suffix = f".{fmt}" if merged else ""
    old = demo / "data" / f"old-split0{suffix}"
    (shutil.copy if merged else shutil.copytree)(demo / f"data/example-split0{suffix}", old)
    # the same input, changed and preprocessed again: the copied windows are of the earlier metadata
    table = pd.read_csv(demo / "data/example.csv")
    table[table.sequenceId % 2 == 0].to_csv(demo / "data/example.csv", index=False)
    assert run_cli("preprocess", *flags, cwd=demo).returncode == 0
    metadata = json.loads((demo / "configs/metadata_configs/example.json").read_text())
    result = _train(demo, "--set", f"training_data_path=data/old-split0{suffix}")
    _refused(
        result,
        f"old-split0{suffix}",
        "the windows were written with metadata of fingerprint",
        f"example.json (fingerprint {metadata['fingerprint']})",
        "set metadata_config_path to the metadata they were written with",
    )
    assert not list((demo / "models").glob("*"))


def test_windows_without_a_fingerprint_get_the_advice_to_preprocess_again(demo):
    import pyarrow.parquet as pq

    assert run_cli("preprocess", cwd=demo).returncode == 0
    windows = demo / "data/example-split0.parquet"
    pq.write_table(pq.read_table(windows).replace_schema_metadata(None), windows)
    _refused(_train(demo), "example-split0.parquet: the windows carry no fingerprint", "sequifier preprocess")


def test_an_input_of_the_same_name_does_not_replace_anothers_outputs(small):
    _preprocess_config(small)
    assert run_cli("preprocess", cwd=small).returncode == 0
    metadata = small / "configs/metadata_configs/table.json"
    before = {p: p.read_bytes() for p in [metadata, *(small / "data").glob("table-split*")]}
    (small / "data/b").mkdir()
    other = sequences_table(n_sequences=5, seed=9)
    other["item"] = "w" + other["item"]  # other values: other id maps
    other.to_csv(small / "data/b/table.csv", index=False)
    other.to_parquet(small / "data/table.parquet", index=False)

    for data in ["data/b/table.csv", "data/table.parquet"]:
        result = run_cli("preprocess", "--data-path", data, cwd=small)
        _refused(
            result, "table.json was written from the input data/table.csv", f"this run's input {data}",
            "set output_path and metadata_config_path for one of them, or rename one",
        )  # fmt: skip
    # a metadata file of its own, the windows still in the same place
    result = run_cli("preprocess", "--data-path", "data/b/table.csv", "-mc", "configs/b.json", cwd=small)
    _refused(result, "data/table-split0.parquet holds windows written with metadata of fingerprint")
    assert {p: p.read_bytes() for p in before} == before  # nothing of the first input's run touched
    assert not (small / "configs/b.json").exists()

    result = run_cli(
        "preprocess", "--data-path", "data/b/table.csv", "-mc", "configs/b.json",
        "--output-path", "data/b-windows", cwd=small,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert run_cli("preprocess", cwd=small).returncode == 0  # the same input again: replaced as before
    assert json.loads(metadata.read_text())["fingerprint"] == json.loads(before[metadata])["fingerprint"]


def test_inference_never_decodes_with_another_datas_id_maps(trained_project):
    """preprocess a, train, then b of the same name: refused; b on its own: refused by the model
    unless its metadata is given, then its values are matched to the model's ids."""
    project = trained_project
    table = pd.read_csv(project / "data/example.csv")
    other = table[table.sequenceId < 40].copy()
    other["itemId"] = other["itemId"].map({"low": "peak", "peak": "low"}).fillna(other["itemId"])
    (project / "data/b").mkdir()
    other.to_csv(project / "data/b/example.csv", index=False)

    result = run_cli("preprocess", "--data-path", "data/b/example.csv", cwd=project)
    _refused(result, "example.json was written from the input data/example.csv", "data/b/example.csv")

    flags = ["--data-path", "data/b/example.csv", "--output-path", "data/b"]
    flags += ["-mc", "configs/metadata_configs/b.json"]
    assert run_cli("preprocess", *flags, cwd=project).returncode == 0
    result = run_cli(
        "infer", "--data-path", "data/b/example-split2.parquet", "--output-path", "out-b", cwd=project
    )
    _refused(
        result,
        "data/b/example-split2.parquet: the windows were written with metadata of fingerprint",
        "the metadata of", "sequifier-default-best-",
        "set metadata_config_path to the metadata these windows were written with",
    )  # fmt: skip
    assert not [path for path in (project / "out-b").rglob("*") if path.is_file()]

    translated = run_cli(
        "infer", "-mc", "configs/metadata_configs/b.json", "--output-path", "out-b", cwd=project, check=True
    )
    assert "the data's metadata (" in translated.stderr and "ids are matched by value" in translated.stderr
    own = run_cli("infer", "--output-path", "out-a", cwd=project, check=True)
    assert own.returncode == 0
    b = pd.read_csv(project / "out-b/predictions/sequifier-default-best-predictions.csv")
    a = pd.read_csv(project / "out-a/predictions/sequifier-default-best-predictions.csv")
    # b's windows are a's first sequences with two values swapped: matched by value, the model sees
    # swapped items, and its predictions are decoded with its own id maps (values of a's data)
    assert set(b.itemId) <= set(table.itemId)
    assert set(b.sequenceId) <= set(range(40)) and len(a) > len(b) > 0
