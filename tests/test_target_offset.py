"""k-step targets (target_offset): a model that predicts the item k steps ahead, read from the one
window format of preprocess; honest validation, baselines, positions and errors, and on a Markov
chain the model's k-step distribution against the exact one (the transition matrix to the power k)."""

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import Project, items_of_splits, run_cli, sequences_table

STATES = [f"s{i}" for i in range(5)]
K, W = 3, 6


def chain_matrix() -> np.ndarray:
    """A cycle: one step on (0.8), stay (0.1) or two steps on (0.1); P^3 differs from P."""
    n = len(STATES)
    matrix = np.zeros((n, n))
    for i in range(n):
        matrix[i, (i + 1) % n] += 0.8
        matrix[i, i] += 0.1
        matrix[i, (i + 2) % n] += 0.1
    return matrix


def chain_table(n_sequences=20, length=250, seed=0) -> pd.DataFrame:
    rng, matrix = np.random.default_rng(seed), chain_matrix()
    frames = []
    for sequence in range(n_sequences):
        states = [int(rng.integers(len(STATES)))]
        for _ in range(length - 1):
            states.append(int(rng.choice(len(STATES), p=matrix[states[-1]])))
        frames.append(
            pd.DataFrame(
                {
                    "sequenceId": sequence,
                    "itemPosition": 10 + 2 * np.arange(length),  # a step of 2
                    "state": [STATES[s] for s in states],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def write_configs(project: Project, target_offset: int, epochs: int = 1, **train) -> None:
    (project.root / "configs" / "preprocess.yaml").write_text(
        yaml.safe_dump(project.config(seq_length=W, split_ratios=[0.8, 0.1, 0.1], stride_by_split=[1, 1, 1]))
    )
    config = {
        "project_root": ".",
        "model_name": "kstep",
        "target_offset": target_offset,
        "export_onnx": False,
        "wandb": {"mode": "disabled"},
        "model_spec": {"dim_model": 16, "n_head": 2, "dim_feedforward": 32, "num_layers": 1},
        "training_spec": {"epochs": epochs, "batch_size": 64, "learning_rate": 0.01},
        **train,
    }
    (project.root / "configs" / "train.yaml").write_text(yaml.safe_dump(config))


def infer(project: Project, **values):
    config = {
        "project_root": ".",
        "train_config_path": "configs/train.yaml",
        "output_path": "outputs",
        "write_format": "parquet",
        "output_probabilities": True,
        **values,
    }
    (project.root / "configs" / "infer.yaml").write_text(yaml.safe_dump(config))
    return run_cli("infer", cwd=project.root)


def test_a_k_step_model_learns_the_k_step_distribution_of_a_markov_chain(project):
    table = chain_table()
    project.write_data(table)
    write_configs(project, K, epochs=2)
    run_cli("preprocess", cwd=project.root, check=True)
    run_cli("train", cwd=project.root, check=True)
    result = infer(project)
    assert result.returncode == 0, result.stderr

    outputs = project.root / "outputs"
    probabilities = pd.read_parquet(
        outputs / "probabilities/sequifier-kstep-best-state-probabilities.parquet"
    )
    predictions = pd.read_parquet(outputs / "predictions/sequifier-kstep-best-predictions.parquet")
    assert (predictions.itemPosition == probabilities.itemPosition).all()
    # each prediction is of the item K steps (of 2 positions) after the last input item
    items = table.set_index(["sequenceId", "itemPosition"]).state
    keys = list(zip(probabilities.sequenceId, probabilities.itemPosition))
    inputs = list(zip(probabilities.sequenceId, probabilities.itemPosition - 2 * K))
    assert items.index.isin(keys).sum() == len(keys)  # every predicted position is an item's
    actual = items.loc[keys].map(STATES.index).to_numpy()
    last_input = items.loc[inputs].map(STATES.index).to_numpy()

    exact = np.linalg.matrix_power(chain_matrix(), K)
    predicted = probabilities[STATES].to_numpy()
    assert predicted.sum(axis=1) == pytest.approx(1, abs=1e-4)  # no mass on classes never seen
    assert np.abs(predicted - exact[last_input]).max() < 0.1
    # the test loss: the model's cross-entropy on the test items against the exact k-step one
    test_loss = -np.log(predicted[np.arange(len(actual)), actual]).mean()
    exact_loss = -np.log(exact[last_input, actual]).mean()
    one_step_loss = -np.log(chain_matrix()[last_input, actual] + 1e-12).mean()
    assert test_loss == pytest.approx(exact_loss, abs=0.03)
    assert one_step_loss > exact_loss + 1  # the test can tell a next-item model from a K-step one
    # the validation loss against the exact K-step conditional entropy (the chain's stationary
    # distribution is uniform, and every row of P^K has the same entropy)
    entropy = -(exact[0] * np.log(exact[0])).sum()
    metrics = pd.read_csv(project.root / "logs" / "sequifier-kstep-metrics.csv")
    epochs = metrics[metrics.kind == "epoch"]
    assert epochs.validation_loss.iloc[-1] == pytest.approx(entropy, abs=0.05)
    assert epochs.validation_loss.iloc[0] > entropy + 0.3  # untrained: far from it

    # what a K-step model cannot do is refused in one line, and nothing is written
    result = infer(project, autoregression=True, autoregression_total_steps=4, output_path="generated")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "autoregression: true" in result.stderr and f"target_offset {K}" in result.stderr
    assert not (project.root / "generated").exists()
    short = project.config(seq_length=W - 2, split_ratios=[0.8, 0.1, 0.1])  # windows of W - 1 items
    (project.root / "configs" / "short.yaml").write_text(yaml.safe_dump(short))
    run_cli(
        "preprocess", "--config-path", "configs/short.yaml", "--output-path", "short-windows",
        "-mc", "configs/short.json", cwd=project.root, check=True,
    )  # fmt: skip
    result = infer(project, metadata_config_path="configs/short.json", output_path="short")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"predicts {K} steps ahead" in result.stderr and f"seq_length >= {W}" in result.stderr
    assert not (project.root / "short").exists()


@pytest.mark.parametrize("offset, seq_length", [(2, None), (3, 2)])
def test_validation_counts_only_validation_targets_k_steps_ahead(project, offset, seq_length):
    from losses_by_hand import counted, losses_by_hand, read_windows

    from sequifier.model.export import load_bundle

    ratios = [0.6, 0.2, 0.2]
    table = sequences_table(n_sequences=30, min_length=5, max_length=30)
    project.write_data(table)
    metadata = project.preprocess(seq_length=W, split_ratios=ratios, stride_by_split=[1, 2, 2])
    project.train_in_process("k", target_offset=offset, seq_length=seq_length)
    model, bundle = load_bundle(project.root / "models" / "sequifier-k-last-1.pt")
    length = W + 1 - offset if seq_length is None else seq_length  # null: the longest that fits
    assert bundle["config"]["seq_length"] == length and bundle["model_args"]["target_offset"] == offset

    validation = read_windows(project.root / metadata["split_paths"][1], "parquet", W)
    items = items_of_splits(table, ratios)
    by_hand = losses_by_hand(model, bundle, validation, items[1])
    metrics = pd.read_csv(project.root / "logs" / "sequifier-k-metrics.csv").set_index("kind")
    row = metrics[metrics.epoch == 1].loc["epoch"]
    assert row.validation_loss == pytest.approx(by_hand["total"], rel=1e-5)
    assert row.validation_accuracy_item == pytest.approx(by_hand["accuracy_item"], rel=1e-6)
    every = {(s, p) for s, p in zip(table.sequenceId, table.itemPosition)}
    assert losses_by_hand(model, bundle, validation, every)["targets"] > by_hand["targets"]

    # the last value baseline repeats the last input item, k before the target
    values = {c: v[:, -(length + offset) :] for c, v in validation["values"].items()}
    mask = counted(validation, items[1], length, offset)
    target, last = values["item"][:, offset:], values["item"][:, :-offset]
    accuracy = ((target == last) & (last >= 3))[mask].mean()
    mse = ((values["price"][:, offset:] - values["price"][:, :-offset]) ** 2)[mask].mean()
    baseline = metrics.loc["baseline_last_value"]
    assert baseline.validation_accuracy_item == pytest.approx(accuracy)
    assert baseline.validation_loss_price == pytest.approx(mse, rel=1e-5)
    next_item = ((values["item"][:, offset:] == values["item"][:, offset - 1 : -1]) & mask).sum() / mask.sum()
    assert next_item != pytest.approx(accuracy)  # the test can tell the item before the target from it


@pytest.mark.parametrize(
    "train, expected",
    [
        (
            {"target_offset": W + 1},
            ["target_offset: 7 with seq_length: null", "windows hold 7", "a smaller target_offset"],
        ),
        (
            {"target_offset": 3, "seq_length": 5},
            [
                "target_offset: 3 with seq_length: 5",
                "needs windows of 8 items",
                "seq_length <= 4",
                "seq_length >= 7",
            ],
        ),
        ({"target_offset": 0}, ["target_offset", "0"]),
        ({"target_offset": "2"}, ["target_offset", "'2'"]),
    ],
)
def test_a_target_offset_the_windows_cannot_hold_is_a_clear_error(project, train, expected):
    project.write_data(chain_table(n_sequences=3, length=20))
    write_configs(project, **{"target_offset": 1, **train})
    run_cli("preprocess", cwd=project.root, check=True)
    result = run_cli("train", cwd=project.root)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3
    for text in expected:
        assert text in result.stderr
    assert "configs/train.yaml" in result.stderr
    assert not (project.root / "models").exists() and not (project.root / "checkpoints").exists()


def test_the_search_space_takes_target_offset():
    from sequifier.errors import ConfigError
    from sequifier.search import space as search

    ids = search.run_ids(search.expand({"target_offset": [1, 3]}, "grid", None, 0, "search.yaml"))
    configs = search.run_configs(ids, {}, "search.yaml", lambda name, point: {})
    assert [c["target_offset"] for c in configs.values()] == [1, 3]
    assert list(configs) == ["target_offset-1", "target_offset-3"]
    with pytest.raises(ConfigError) as raised:
        bad = search.run_ids(search.expand({"target_offset": [0]}, "grid", None, 0, "search.yaml"))
        search.run_configs(bad, {}, "search.yaml", lambda name, point: {})
    assert "space.target_offset" in str(raised.value) and "0 is less than the minimum of 1" in str(
        raised.value
    )


def test_the_onnx_outputs_say_how_far_ahead_they_predict():
    from sequifier.model.export import onnx_names
    from sequifier.model.network import ModelArgs

    common = {"input_columns": (("item", "categorical", 9, 4),)}
    common["target_columns"] = (("item", "categorical", 9),)
    common.update(seq_length=8, dim_model=8, n_head=2, n_kv_heads=2)
    assert onnx_names(ModelArgs(**common), "generative")[1] == ["next_item"]
    assert onnx_names(ModelArgs(**common, target_offset=3), "generative")[1] == ["ahead3_item"]
    assert onnx_names(ModelArgs(**common, objective="masked"), "generative")[1] == ["filled_item"]
    assert onnx_names(ModelArgs(**common, objective="masked"), "embedding")[1] == ["position_embeddings"]
