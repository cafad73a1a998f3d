"""Bad infer configs, models and data: one clear error naming the key or file, the value and what
is expected; no output written, not even in part."""

import pathlib

import onnx
import pytest
import torch
from conftest import run_cli
from test_infer import model_file, preprocess_again

from sequifier import config
from sequifier.errors import SequifierError
from sequifier.infer import run


def garbage(name):
    def write(project):
        (project / "models" / name).write_bytes(b"not a model at all")
        return {"model_path": f"models/{name}"}

    return write


def onnx_without_description(project):
    proto = onnx.load(str(project / model_file(project, "onnx")))
    del proto.metadata_props[:]
    onnx.save(proto, str(project / "models" / "plain.onnx"))
    return {"model_path": "models/plain.onnx"}


def data_without_price(project):
    return {"metadata_config_path": preprocess_again(project, "items", selected_columns=["itemId"])}


def windows_of_other_columns(project):
    preprocess_again(project, "items", selected_columns=["itemId"])
    return {"data_path": "data/items/example-split2.parquet"}


def longer_windows(project):
    preprocess_again(project, "longer", seq_length=20)
    return {"data_path": "data/longer/example-split2.parquet"}


def no_models(project):
    (project / "configs" / "empty.yaml").write_text("models_path: empty-models\n")
    return {"train_config_path": "configs/empty.yaml"}


def bundle_with_an_object(project):
    """A bundle of the right format with a Python object (a path) inside: loading it needs pickle."""
    bundle = torch.load(project / model_file(project), weights_only=True)
    bundle["config"]["models_path"] = pathlib.Path("models")
    torch.save(bundle, project / "models" / "sequifier-odd-best-1.pt")
    return {"model_path": "models/sequifier-odd-best-1.pt"}


def onnx_model(project):
    return {"model_path": model_file(project, "onnx")}


CASES = {
    "model file missing": ({"model_path": "models/nope.pt"}, ["models/nope.pt: model file not found"]),
    "pt file damaged": (garbage("bad.pt"), ["models/bad.pt: cannot read this model file"]),
    "onnx file damaged": (garbage("bad.onnx"), ["models/bad.onnx: cannot read this ONNX file"]),
    "onnx of another tool": (
        onnx_without_description,
        ["plain.onnx: not an ONNX model exported by sequifier train"],
    ),
    "not a model file": ({"model_path": "configs/train.yaml"}, ["is neither a .pt bundle nor an .onnx file"]),
    "data without a column of the model": (
        data_without_price,
        [
            "the model reads column 'price', which the data (",
            "items.json) does not have; its columns: itemId",
        ],
    ),
    "windows that do not match the metadata": (
        windows_of_other_columns,
        [
            "items/example-split2.parquet: the windows were written with metadata of fingerprint",
            "but they are read with the metadata of",
            "set metadata_config_path to the metadata these windows",
        ],
    ),
    "probabilities without a categorical target": (
        {"target_columns": ["price"], "output_probabilities": True},
        [
            "infer config: output_probabilities: true, but the targets written (price) are all real and "
            "have no probabilities; write a categorical target (itemId), or set output_probabilities: false"
        ],
    ),
    "probabilities without a categorical target (ONNX)": (
        lambda project: {**onnx_model(project), "target_columns": ["price"], "output_probabilities": True},
        ["output_probabilities: true, but the targets written (price) are all real"],
    ),
    "pt file holding other objects than tensors": (
        bundle_with_an_object,
        [
            "models/sequifier-odd-best-1.pt: this model file holds objects other than tensors and plain "
            "data (pathlib.",
            "it is not loaded, since unpickling them could run code",
        ],
    ),
    "a target the model does not have": (
        {"target_columns": ["cost"]},
        ["target_columns: 'cost' is not a target of the model (itemId, price)"],
    ),
    "sampling a real column": (
        {"sample_from_distribution_columns": ["price"]},
        ["sample_from_distribution_columns: 'price' is not a categorical target written (itemId)"],
    ),
    "autoregression without every input as a target": (
        {"target_columns": ["itemId"], "autoregression": True, "autoregression_total_steps": 3},
        ["input column 'price' is not among the targets written (itemId)"],
    ),
    "autoregression of an embedding model": (
        lambda project: {
            "model_type": "embedding",
            "model_path": model_file(project, embedding=True),
            "autoregression": True,
            "autoregression_total_steps": 2,
        },
        ["autoregression: true, but model_type is embedding; only a generative model generates"],
    ),
    "windows of another metadata": (
        longer_windows,
        ["windows of 20 + 1 items, but the metadata says seq_length 16; the metadata file does not match"],
    ),
    "autoregression without steps": (
        {"autoregression": True},
        ["autoregression_total_steps: null, but autoregression needs a number of steps"],
    ),
    "embedding model for predictions": (
        lambda project: {"model_path": model_file(project, embedding=True)},
        ["model_type: generative, but", "-best-embedding-", "is the embedding export"],
    ),
    "Monte-Carlo dropout on an ONNX model without dropout": (
        lambda project: {**onnx_model(project), "infer_with_dropout": True},
        ["infer_with_dropout: true, but", "was exported without dropout"],
    ),
    "other input columns": (
        {"input_columns": ["itemId"]},
        ["input_columns: ['itemId'], but the model reads ['itemId', 'price']"],
    ),
    "other seq_length": ({"seq_length": 8}, ["seq_length: 8, but the model reads 16 items"]),
    "no trained model": (
        no_models,
        ["model_path is null and", "empty-models holds no sequifier-default-best-EPOCH.pt", "train first"],
    ),
    "no train config to find the model": (
        {"train_config_path": "configs/none.yaml"},
        ["model_path is null and the train config", "configs/none.yaml (train_config_path) does not exist"],
    ),
    "two models with the same output names": (
        lambda project: {"model_path": [model_file(project, "pt"), model_file(project, "onnx")]},
        ["give the same output names (sequifier-default-best-...)"],
    ),
    "unknown key": ({"autoregresion": True}, ["autoregresion: unknown key (did you mean 'autoregression'?)"]),
    "cuda without a GPU": (
        {"device": "cuda"},
        ["infer config: device: 'cuda', but torch finds no CUDA GPU on this machine", "set device: cpu"],
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_infer_input_is_a_clear_error_and_writes_nothing(trained_project, case, tmp_path):
    if case == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    overrides, expected = CASES[case]
    overrides = overrides(trained_project) if callable(overrides) else overrides
    output = tmp_path / "outputs"
    settings = {"project_root": str(trained_project), "output_path": str(output), **overrides}
    with pytest.raises(SequifierError) as raised:
        run(config.load("infer", trained_project / "configs" / "infer.yaml", settings))
    for text in expected:
        assert text in str(raised.value)
    assert not [path for path in output.rglob("*") if path.is_file()]


def test_a_bad_shard_midway_leaves_no_output(trained_project, tmp_path):
    metadata = preprocess_again(trained_project, "midway", merge_output=False, batches_per_file=100)
    preprocess_again(
        trained_project, "others", merge_output=False, batches_per_file=100, selected_columns=["itemId"]
    )
    shards = sorted((trained_project / "data/midway/example-split2").iterdir())
    shards[3].write_bytes((trained_project / "data/others/example-split2" / shards[3].name).read_bytes())
    output = tmp_path / "outputs"
    settings = {
        "project_root": str(trained_project),
        "output_path": str(output),
        "metadata_config_path": metadata,
    }
    with pytest.raises(
        SequifierError, match="part-00003.parquet: the windows were written with metadata of fingerprint"
    ):
        run(config.load("infer", trained_project / "configs" / "infer.yaml", settings))
    assert not [path for path in output.rglob("*") if path.is_file()]
    assert list(output.rglob("*")) == []  # no temporaries, and no folders made for this run only
    shards[3].write_bytes(shards[3].read_bytes()[:200])
    with pytest.raises(SequifierError, match="part-00003.parquet: cannot read windows: Parquet magic bytes"):
        run(config.load("infer", trained_project / "configs" / "infer.yaml", settings))


def test_cli_reports_a_bad_infer_config_in_one_line(trained_project):
    result = run_cli("infer", "-mp", "models/missing.onnx", cwd=trained_project)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1]
        == "sequifier infer: error: models/missing.onnx: model file not found"
    )
