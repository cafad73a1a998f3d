"""A masked model fills in a missing middle item that depends on both its neighbours, which a
causal model, seeing only the items before it, cannot."""

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_cli

K, W = 4, 6  # values of an item, items a model reads


def chain_table(n_sequences=200, length=30, noise=0.05, seed=0) -> pd.DataFrame:
    """Items at even itemPositions are drawn at random from 0..3; an item at an odd one tells the
    parities of its two neighbours, 2 x (item before % 2) + (item after % 2) (a random value with
    probability `noise`): the item before decides half of it, the item after the other half."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0, K, (n_sequences, length))
    middle = 2 * (items[:, 0:-2:2] % 2) + items[:, 2::2] % 2
    noisy = rng.random(middle.shape) < noise
    items[:, 1:-1:2] = np.where(noisy, rng.integers(0, K, middle.shape), middle)
    return pd.DataFrame(
        {
            "sequenceId": np.repeat(np.arange(n_sequences), length),
            "itemPosition": np.tile(np.arange(length), n_sequences),
            "item": items.reshape(-1),
        }
    )


def fill_in_accuracy(project, objective: str, epochs: int = 4) -> float:
    """Train a small model by the CLI, fill in each test window's middle items at odd itemPositions
    (masked: the item before the window's last; causal: the window's last, from the items
    before it) and return the share right."""
    train = ["model_name=" + objective, "objective=" + objective, "masking_probability=0.3"]
    train += [f"training_spec.epochs={epochs}", "training_spec.learning_rate=0.005"]
    train += ["training_spec.batch_size=64"]
    run_cli("train", *[a for s in train for a in ("--set", s)], cwd=project.root, check=True)
    (best,) = (project.root / "models").glob(f"sequifier-{objective}-best-[0-9]*.pt")
    infer = [f"model_path=models/{best.name}", f"output_path=out-{objective}"]
    infer += ["mask_positions=[-2]"] if objective == "masked" else []
    run_cli("infer", *[a for s in infer for a in ("--set", s)], cwd=project.root, check=True)
    predicted = pd.read_csv(
        project.root / f"out-{objective}" / "predictions" / f"sequifier-{objective}-best-predictions.csv"
    )
    truth = pd.read_csv(project.root / "data" / "table.csv")
    both = predicted.merge(truth, on=["sequenceId", "itemPosition"], suffixes=("", "_true"))
    middle = both[(both.itemPosition % 2 == 1) & (both.itemPosition < 29)]
    assert len(middle) >= 200
    return float((middle.item == middle.item_true).mean())


def chain_project(project, n_sequences: int = 200) -> None:
    """The chain's table, preprocessed (windows of W + 1 items, stride 1), with train and infer configs
    of a small model."""
    project.write_data(chain_table(n_sequences))
    project.write_config(seq_length=W, stride_by_split=[1, 1, 1], column_types={"item": "categorical"})
    run_cli("preprocess", cwd=project.root, check=True)
    project.write_train_config()
    config = yaml.safe_load((project.root / "configs" / "train.yaml").read_text())
    config["model_spec"] = {"dim_model": 32, "n_head": 4, "dim_feedforward": 64, "num_layers": 2}
    (project.root / "configs" / "train.yaml").write_text(yaml.safe_dump(config))
    (project.root / "configs" / "infer.yaml").write_text(yaml.safe_dump({"project_root": "."}))


@pytest.mark.slow
def test_masked_beats_causal_on_filling_in_a_middle_item(project):
    chain_project(project)
    masked, causal = fill_in_accuracy(project, "masked"), fill_in_accuracy(project, "causal")
    assert causal < 0.6, "the item after it decides half, which a causal model does not see"
    assert masked > 0.75 and masked > causal + 0.2
