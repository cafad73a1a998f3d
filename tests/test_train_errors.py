"""Bad train configs and data: one clear error naming the key or file, the value and what is allowed;
nothing written."""

import json

import pytest
import torch
from conftest import made_project, run_cli

from sequifier import config
from sequifier.errors import SequifierError
from sequifier.train import run


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return made_project(tmp_path_factory.mktemp("errors"))


def altered_metadata(made, change, fingerprinted=False) -> str:
    """The example's metadata changed by hand (or, `fingerprinted`, as another preprocess run wrote it)."""
    from sequifier.data.metadata import Metadata

    metadata = json.loads((made / "configs/metadata_configs/example.json").read_text())
    change(metadata)
    if fingerprinted:
        fields = {k: v for k, v in metadata.items() if k != "format"}
        metadata = Metadata(**fields).fingerprinted().to_dict()
    path = made / "configs/metadata_configs/altered.json"
    path.write_text(json.dumps(metadata))
    return "configs/metadata_configs/altered.json"


def reversed_columns(metadata):
    metadata["columns"] = metadata["columns"][::-1]


def fewer_classes(metadata):
    metadata["n_classes"]["itemId"] = 4


def damaged_checkpoint(made):
    folder = made / "checkpoints"
    folder.mkdir(exist_ok=True)
    (folder / "sequifier-bad-epoch-3.pt").write_bytes(b"not a checkpoint")
    return {"training_spec.continue_training": True}


CASES = {
    "target not a column": (
        {"target_columns": ["itemId", "cost"]},
        ["target_columns: 'cost' is not a column of the data; columns: itemId, price"],
    ),
    "heads do not divide": (
        {"model_spec.n_head": 3},
        ["model_spec.n_head: 3 does not divide model_spec.dim_model (32)"],
    ),
    "kv heads do not divide": (
        {"model_spec.attention_type": "gqa", "model_spec.n_kv_heads": 3},
        ["model_spec.n_kv_heads: 3 does not divide model_spec.n_head (4)"],
    ),
    "gqa without kv heads": (
        {"model_spec.attention_type": "gqa"},
        ["model_spec.n_kv_heads: null, but attention_type gqa needs"],
    ),
    "embedding widths do not sum": (
        {
            "model_spec.feature_embedding_dims": {"itemId": 10, "price": 10},
            "model_spec.joint_embedding_dim": 32,
        },
        [
            "model_spec.feature_embedding_dims: {'itemId': 10, 'price': 10} sum to 20",
            "joint_embedding_dim (32)",
        ],
    ),
    "embedding widths miss a column": (
        {"model_spec.feature_embedding_dims": {"itemId": 10}},
        ["model_spec.feature_embedding_dims: has ['itemId']; expected one width per input column"],
    ),
    "seq_length beyond the windows": (
        {"seq_length": 40},
        ["seq_length: 40 is longer than the preprocessed windows (16 in", "example.json"],
    ),
    "real criterion on categorical": (
        {"training_spec.criterion": {"itemId": "MSELoss"}},
        ["training_spec.criterion.itemId: 'MSELoss' for a categorical target; allowed: CrossEntropyLoss"],
    ),
    "class weights of the wrong length": (
        {"training_spec.class_weights": {"itemId": [1.0, 2.0]}},
        ["training_spec.class_weights.itemId: 2 weights; expected one per class id (8"],
    ),
    "unknown key": (
        {"model_spec.dim_modle": 8},
        ["model_spec.dim_modle: unknown key (did you mean 'dim_model'?)"],
    ),
    "bad enum": (
        {"model_spec.activation_fn": "tanh"},
        ["model_spec.activation_fn: 'tanh' is not valid", "relu, gelu or swiglu"],
    ),
    "unknown optimizer": (
        {"training_spec.optimizer": {"name": "AdamX"}},
        ["training_spec.optimizer.name: unknown optimizer 'AdamX'; did you mean"],
    ),
    "optimizer argument of the wrong shape": (
        {"training_spec.optimizer": {"name": "AdamW", "betas": [0.9]}},
        ["train config: training_spec.optimizer: AdamW({'lr': 0.003, 'betas': (0.9,)}) is invalid"],
    ),
    "scheduler that fails when stepped": (
        {"training_spec.scheduler": {"name": "StepLR", "step_size": 0}},
        [
            "train config: training_spec.scheduler: {'name': 'StepLR', 'step_size': 0} fails when stepped",
            "ZeroDivisionError",
        ],
    ),
    "read_format not the files'": (
        {"read_format": "csv"},
        ["example-split0.parquet: read_format is csv, but the file is '.parquet'"],
    ),
    "cuda without a GPU": (
        {"training_spec.device": "cuda"},
        ["training_spec.device: 'cuda', but torch finds no CUDA GPU", "set training_spec.device: cpu"],
    ),
    "metadata missing": (
        {"metadata_config_path": "configs/metadata_configs/none.json"},
        ["none.json: metadata file not found; run `sequifier preprocess` first"],
    ),
    "windows missing": (
        {"training_data_path": "data/gone.parquet"},
        ["data/gone.parquet: windows not found"],
    ),
    "metadata of other columns": (
        lambda made: {"metadata_config_path": altered_metadata(made, reversed_columns, fingerprinted=True)},
        [
            "example-split0.parquet: the windows were written with metadata of fingerprint",
            "but they are read with",
            "altered.json (fingerprint",
            "set metadata_config_path to the metadata",
        ],
    ),
    "metadata edited by hand": (
        lambda made: {"metadata_config_path": altered_metadata(made, fewer_classes)},
        ["altered.json: the metadata was changed after it was written", "run `sequifier preprocess` again"],
    ),
    "damaged checkpoint": (
        damaged_checkpoint,
        ["sequifier-bad-epoch-3.pt: cannot resume from this checkpoint, the file is damaged", "delete it"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_train_input_is_a_clear_error_and_writes_nothing(made, case):
    if case == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    overrides, expected = CASES[case]
    overrides = overrides(made) if callable(overrides) else overrides
    settings = {
        "project_root": str(made),
        "model_name": "bad",
        "export_onnx": False,
        "wandb.mode": "disabled",
    }
    with pytest.raises(SequifierError) as raised:
        run(config.load("train", made / "configs" / "train.yaml", {**settings, **overrides}))
    for text in expected:
        assert text in str(raised.value)
    assert not list(made.glob("models/sequifier-bad-*")) and not list(made.glob("logs/sequifier-bad*"))
    assert [p.name for p in made.glob("checkpoints/sequifier-bad-*")] in ([], ["sequifier-bad-epoch-3.pt"])


def test_cli_reports_a_bad_train_config_in_one_line(made):
    result = run_cli("train", "--set", "model_spec.n_head=5", "--set", "bad", cwd=made)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--set 'bad': expected KEY=VALUE" in result.stderr
    result = run_cli("train", "--set", "model_spec.n_head=5", cwd=made)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "sequifier train: error: configs/train.yaml: "
        "model_spec.n_head: 5 does not divide model_spec.dim_model (32)"
    )


def test_resuming_with_other_settings_is_refused_and_names_them(made):
    settings = {
        "project_root": str(made),
        "model_name": "changed",
        "export_onnx": False,
        "wandb.mode": "disabled",
    }
    path = made / "configs" / "train.yaml"
    run(config.load("train", path, {**settings, "training_spec.epochs": 1}))
    resume = {**settings, "training_spec.epochs": 2, "training_spec.continue_training": True}
    with pytest.raises(SequifierError) as raised:
        run(
            config.load(
                "train", path, {**resume, "training_spec.learning_rate": 0.01, "model_spec.dim_model": 16}
            )
        )
    message = str(raised.value)
    assert "sequifier-changed-epoch-1.pt, it was trained otherwise" in message
    assert (
        "model_spec.dim_model: 32 -> 16;" in message
        and "training_spec.learning_rate: 0.003 -> 0.01;" in message
    )
    assert run(config.load("train", path, resume))["epochs"] == 2  # more epochs: a continuation
