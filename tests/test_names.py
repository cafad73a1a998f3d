"""Names and values sequifier never chose: column names that are attributes of torch modules or
hold dots, quotes and spaces, class values named like the key columns of the outputs, text that
reads like a missing value, and model files whose weights were kept by column name. All through
the real CLI."""

import json
import re

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import pytest
import torch
import yaml
from conftest import run_cli

COLUMNS = ["type", "a.b", 'say "hi"', "items", "é ü", ""]  # besides sequenceId and itemPosition
CLASSES = ["sequenceId", "itemPosition", "_sequenceId", "v"]  # the values of column `type`


def hostile_table(n_sequences=16, length=10, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_sequences * length
    return pd.DataFrame(
        {
            "sequenceId": np.repeat(np.arange(n_sequences) + 100, length),
            "itemPosition": np.tile(np.arange(length), n_sequences),
            "type": rng.choice(CLASSES, size=n),
            "a.b": np.round(rng.normal(size=n), 3),
            'say "hi"': rng.choice(["p", "q"], size=n),
            "items": rng.integers(0, 3, size=n),
            "é ü": rng.choice(["m", "n"], size=n),
            "": rng.choice(["k", "l"], size=n),
        }
    )


def write_configs(root, **train):
    (root / "configs").mkdir(parents=True, exist_ok=True)
    configs = {
        "preprocess": {
            "data_path": "data/t.csv",
            "seq_length": 4,
            "stride_by_split": [1, 1, 1],
            "n_cores": 1,
        },
        "train": {
            "model_name": "m",
            "target_columns": None,
            "export_embedding_model": False,
            "model_spec": {"dim_model": 8, "n_head": 2, "dim_feedforward": 8, "num_layers": 1},
            "training_spec": {"epochs": 1, "batch_size": 16},
            "wandb": {"mode": "disabled"},
            **train,
        },
        "infer": {"output_probabilities": True},
    }
    for stage, values in configs.items():
        (root / "configs" / f"{stage}.yaml").write_text(yaml.safe_dump(values, allow_unicode=True))


def read(path) -> pd.DataFrame:
    """An output CSV with its header as written (pandas would rename an empty column name)."""
    return pacsv.read_csv(path).to_pandas()


def cli(root, *args):
    result = run_cli(*args, cwd=root)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def hostile_project(tmp_path_factory):
    """Preprocessed, trained (pt and ONNX exports) and applied by both, through the CLI."""
    root = tmp_path_factory.mktemp("names")
    (root / "data").mkdir()
    hostile_table().to_csv(root / "data" / "t.csv", index=False)
    write_configs(root)
    cli(root, "preprocess")
    cli(root, "train")
    cli(root, "infer", "-mp", "models/sequifier-m-best-1.pt", "--output-path", "out-pt")
    cli(root, "infer", "-mp", "models/sequifier-m-best-1.onnx", "--output-path", "out-onnx")
    return root


def test_any_column_name_works_from_preprocess_to_both_kinds_of_inference(hostile_project):
    root = hostile_project
    table = hostile_table()
    for out in ("out-pt", "out-onnx"):
        predictions = read(root / out / "predictions" / "sequifier-m-best-predictions.csv")
        assert list(predictions.columns) == ["sequenceId", "itemPosition", *COLUMNS]
        assert set(predictions.sequenceId) <= set(table.sequenceId)
        assert set(predictions["type"]) <= set(CLASSES) and set(predictions["items"]) <= {0, 1, 2}
        assert set(predictions['say "hi"']) <= {"p", "q"} and set(predictions["é ü"]) <= {"m", "n"}
        assert np.isfinite(predictions["a.b"]).all()
    pt, onnx = (
        read(root / out / "predictions" / "sequifier-m-best-predictions.csv")
        for out in ("out-pt", "out-onnx")
    )
    np.testing.assert_allclose(pt["a.b"], onnx["a.b"], rtol=1e-4, atol=1e-5)


def test_probability_files_are_named_by_target_or_by_position(hostile_project):
    folder = hostile_project / "out-onnx" / "probabilities"
    names = sorted(path.name for path in folder.iterdir())
    # `say "hi"` and "" are no plain file names: their files are named by their place among the targets
    assert names == sorted(
        f"sequifier-m-best-{name}-probabilities.csv"
        for name in ["type", "target2", "items", "é ü", "target5"]
    )
    quoted = read(folder / "sequifier-m-best-target2-probabilities.csv")
    assert list(quoted.columns) == ["sequenceId", "itemPosition", "p", "q"]


def test_class_values_named_like_key_columns_never_overwrite_them(hostile_project):
    table = hostile_table()
    for out in ("out-pt", "out-onnx"):
        path = hostile_project / out / "probabilities" / "sequifier-m-best-type-probabilities.csv"
        probabilities = read(path)
        assert list(probabilities.columns[:2]) == ["sequenceId", "itemPosition"]
        assert sorted(probabilities.columns[2:]) == ["__sequenceId", "_itemPosition", "_sequenceId", "v"]
        # the keys are the sequences and positions of the data, the classes' columns sum to 1
        assert set(probabilities.sequenceId) <= set(table.sequenceId)
        assert probabilities.itemPosition.between(0, 9).all()
        np.testing.assert_allclose(probabilities.iloc[:, 2:].sum(axis=1), 1.0, rtol=1e-6)


def test_onnx_names_are_plain_and_the_export_says_which_column_each_is(hostile_project):
    import onnx

    from sequifier.model.export import read_onnx_description

    path = hostile_project / "models" / "sequifier-m-best-1.onnx"
    proto = onnx.load(str(path))
    description = read_onnx_description(path, proto)
    inputs = [i.name for i in proto.graph.input]
    assert (
        inputs == description["onnx_inputs"] == ["type", "input_1", "input_2", "items", "input_4", "input_5"]
    )
    outputs = [o.name for o in proto.graph.output]
    assert (
        outputs
        == description["onnx_outputs"]
        == ["next_type", "next_1", "next_2", "next_items", "next_4", "next_5"]
    )


def _by_column_name(weights: dict, args: dict) -> dict:
    """The weights as an earlier version kept them: encoders and heads keyed by column name."""
    inputs = [column[0] for column in args["input_columns"]]
    targets = [column[0] for column in args["target_columns"]]

    def rename(key):
        key = re.sub(
            r"^encoders\.encoders\.(\d+)\.", lambda m: f"encoders.encoders.{inputs[int(m[1])]}.", key
        )
        return re.sub(r"^heads\.(\d+)\.", lambda m: f"heads.{targets[int(m[1])]}.", key)

    return {rename(key): value for key, value in weights.items()}


def test_a_model_file_with_weights_kept_by_column_name_is_refused_with_advice(hostile_project, tmp_path):
    bundle = torch.load(hostile_project / "models" / "sequifier-m-best-1.pt", weights_only=True)
    bundle["state_dict"] = _by_column_name(bundle["state_dict"], bundle["model_args"])
    bundle["format"] = "sequifier-model/1"  # as an earlier version wrote it: no checksum
    del bundle["checksum"]
    old = tmp_path / "sequifier-old-best-1.pt"
    torch.save(bundle, old)
    result = run_cli("infer", "-mp", old, "--output-path", tmp_path / "out", cwd=hostile_project)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    for piece in (str(old), "earlier version of sequifier", "by column name", "train the model again"):
        assert piece in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_with_weights_kept_by_column_name_is_refused_on_resume(tmp_path):
    root = tmp_path / "p"
    (root / "data").mkdir(parents=True)
    hostile_table(n_sequences=8).to_csv(root / "data" / "t.csv", index=False)
    write_configs(root, export_onnx=False)
    cli(root, "preprocess")
    cli(root, "train")
    [checkpoint] = sorted((root / "checkpoints").glob("sequifier-m-epoch-*.pt"))
    state = torch.load(checkpoint, weights_only=True)
    state["model"] = _by_column_name(state["model"], state["model_args"])
    torch.save(state, checkpoint)
    models = {path: path.read_bytes() for path in (root / "models").iterdir()}
    result = run_cli(
        "train", "--set", "training_spec.continue_training=true", "--set", "training_spec.epochs=2", cwd=root
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    for piece in (checkpoint.name, "earlier version of sequifier", "continue_training: false"):
        assert piece in result.stderr
    assert {path: path.read_bytes() for path in (root / "models").iterdir()} == models


@pytest.mark.parametrize(
    "optimizer, reason",
    [("LBFGS", "needs a closure"), ("SparseAdam", "sparse gradients only"), ("Muon", "2-D weight matrices")],
)
def test_optimizers_that_cannot_train_the_model_are_refused_before_training(
    hostile_project, optimizer, reason
):
    result = run_cli(
        "train",
        "--set",
        f"training_spec.optimizer={{name: {optimizer}}}",
        "--set",
        "model_name=o",
        cwd=hostile_project,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    for piece in ("configs/train.yaml", "training_spec.optimizer.name", optimizer, reason, "AdamW"):
        assert piece in result.stderr
    assert not list((hostile_project / "models").glob("sequifier-o-*"))
    assert not list((hostile_project / "checkpoints").glob("sequifier-o-*"))


def test_quoted_null_spellings_are_text_values(tmp_path):
    """In CSV, "NA" and "" quoted are values of a text column; unquoted they are missing (refused,
    tests/test_bad_input.py)."""
    root = tmp_path / "p"
    (root / "data").mkdir(parents=True)
    values = ['"NA"', '""', "x"]
    lines = ["sequenceId,itemPosition,a"] + [f"{s},{i},{values[i % 3]}" for s in range(6) for i in range(6)]
    (root / "data" / "t.csv").write_text("\n".join(lines) + "\n")
    write_configs(root)
    cli(root, "preprocess")
    metadata = json.loads((root / "configs" / "metadata_configs" / "t.json").read_text())
    assert sorted(metadata["id_maps"]["a"]) == ["", "NA", "x"]
