"""objective: masked: which items are chosen and how they are corrupted, bidirectional attention,
exact resumption, fixed validation masks, and the errors of bad settings."""

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from conftest import made_project, run_cli
from test_train import interrupted_at_step, read_metrics_of

from sequifier import config
from sequifier.data.columns import FIRST_ID, MASK_ID
from sequifier.data.window_files import SPLIT_START
from sequifier.model.network import ModelArgs, Transformer
from sequifier.train import distributed
from sequifier.train.masking import CHOSEN, MaskedObjective
from sequifier.train.plan import make_train_plan
from sequifier.train.trainer import Trainer

LOSSES = ("train_loss", "validation_loss", "train_loss_itemId", "validation_loss_price")
ARGS = ModelArgs(
    input_columns=(("item", "categorical", 20, 4), ("price", "real", 0, 4)),
    target_columns=(("item", "categorical", 20),),
    seq_length=50,
    dim_model=8,
    n_head=2,
    n_kv_heads=2,
    objective="masked",
)
SPEC = {"criterion": {"item": "CrossEntropyLoss"}, "loss_weights": {"item": 1.0}, "class_weights": None}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return made_project(tmp_path_factory.mktemp("masked"))


def a_batch(windows=400, context=10):
    """Windows of 51 slots whose first `context` slots are padding or an earlier split's items."""
    generator = torch.Generator().manual_seed(0)
    return {
        "item": torch.randint(FIRST_ID, 20, (windows, 51), generator=generator),
        "price": torch.rand((windows, 51), generator=generator) + 1.0,
        SPLIT_START: torch.full((windows,), context, dtype=torch.int16),
    }


def test_a_share_of_the_own_items_is_chosen_and_80_10_10_masked_random_kept():
    objective = MaskedObjective(ARGS, SPEC, 0.15, torch.device("cpu"))
    objective.reseed(3)
    batch = a_batch()
    inputs = objective.inputs(batch, ["item", "price"], torch.device("cpu"))
    chosen, item, price = batch[CHOSEN], batch["item"][:, 1:], batch["price"][:, 1:]
    assert not chosen[:, :9].any(), "slots 1..9 are before the window's split: never chosen"
    assert abs(chosen[:, 9:].float().mean().item() - 0.15) < 0.01
    masked = inputs["item"] == MASK_ID
    assert (masked <= chosen).all() and (masked == inputs["price"].isnan()).all()
    assert abs(masked[chosen].float().mean().item() - 0.8) < 0.03
    unchosen = ~chosen
    assert torch.equal(inputs["item"][unchosen], item[unchosen])
    assert torch.equal(inputs["price"][unchosen], price[unchosen])
    changed = (inputs["price"] != price) & ~masked  # replaced by a random item of the window
    assert abs(changed[chosen].float().mean().item() - 0.1) < 0.03
    assert (inputs["item"][changed] >= FIRST_ID).all()
    again = MaskedObjective(ARGS, SPEC, 0.15, torch.device("cpu"))
    again.reseed(3)
    other = a_batch()
    assert torch.equal(again.inputs(other, ["item", "price"], torch.device("cpu"))["item"], inputs["item"])
    mask = objective.mask(batch, torch.device("cpu"))
    outputs = {"item": torch.zeros(400, 50, 20)}
    total, count = objective.losses(outputs, batch)["item"]
    assert count == chosen.sum() and total.item() == pytest.approx(
        count.item() * torch.log(torch.tensor(20.0))
    )
    assert torch.equal(mask, chosen)


def test_every_window_has_a_chosen_item_however_small_the_probability():
    objective = MaskedObjective(ARGS, SPEC, 1e-9, torch.device("cpu"))
    objective.reseed(5)
    batch = a_batch(windows=50, context=40)  # items 40..50 of each window are its own
    batch[SPLIT_START][:5] = 51  # windows without an item of their own split: nothing to choose
    objective.inputs(batch, ["item", "price"], torch.device("cpu"))
    chosen = batch[CHOSEN]
    assert chosen[5:].sum(1).tolist() == [1] * 45 and not chosen[:5].any()
    assert not chosen[:, :39].any()
    total, count = objective.losses({"item": torch.zeros(50, 50, 20)}, batch)["item"]
    assert count == 45 and torch.isfinite(total / count)


def test_masked_attention_sees_later_items_and_causal_does_not():
    torch.manual_seed(0)
    inputs = {"item": torch.randint(FIRST_ID, 20, (1, 50)), "price": torch.rand(1, 50)}
    later = {"item": inputs["item"].clone(), "price": inputs["price"].clone()}
    later["item"][0, -1] = FIRST_ID if inputs["item"][0, -1] != FIRST_ID else FIRST_ID + 1
    for objective, changes in (("masked", True), ("causal", False)):
        torch.manual_seed(0)
        model = Transformer(ModelArgs(**{**ARGS.to_dict(), "objective": objective})).eval()
        first, second = model(inputs)["item"][0, 0], model(later)["item"][0, 0]
        assert (not torch.equal(first, second)) == changes
    masked = Transformer(ARGS).eval()
    nan = {"item": inputs["item"], "price": inputs["price"].clone()}
    nan["price"][0, 5] = float("nan")
    assert torch.isfinite(masked(nan)["item"]).all(), "a masked real value is the column's mask vector"


def test_a_resumed_masked_run_equals_an_uninterrupted_one(made, monkeypatch):
    settings = {"objective": "masked", "training_spec.epochs": 2, "training_spec.dropout": 0.1}
    settings["training_spec.accumulation_steps"] = 2
    first = read_metrics_of(made, "ma", settings)
    again = read_metrics_of(made, "mb", settings)
    assert [[r[k] for k in LOSSES] for r in first] == [[r[k] for k in LOSSES] for r in again]
    causal = read_metrics_of(made, "mc", {**settings, "objective": "causal"})
    assert causal[-1]["validation_loss"] != first[-1]["validation_loss"]
    interrupted_at_step(monkeypatch, 13, made, "md", settings)  # in the middle of epoch 2
    resumed = read_metrics_of(made, "md", {**settings, "training_spec.continue_training": True})
    assert [[r[k] for k in LOSSES] for r in resumed] == [[r[k] for k in LOSSES] for r in first]


def test_every_validation_masks_the_same_items(made):
    overrides = {"project_root": str(made), "objective": "masked", "wandb.mode": "disabled"}
    plan = make_train_plan(config.load("train", made / "configs" / "train.yaml", overrides))
    trainer = Trainer(plan, distributed.Process(0, 1, torch.device("cpu")))
    first, second = trainer.validate(), trainer.validate()
    assert first["losses"] == second["losses"]


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("objective=bidirectional", "objective"),
        ("masking_probability=0", "masking_probability"),
        ("masking_probability=1.5", "masking_probability"),
        ("target_offset=2", "objective: masked with target_offset: 2"),
    ],
)
def test_bad_masking_settings_are_refused_naming_the_key(made, setting, expected):
    masked = ["--set", "objective=masked"] if setting.startswith("target_offset") else []
    result = run_cli("train", "--set", setting, *masked, "--set", "wandb.mode=disabled", cwd=made)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert expected in result.stderr and setting.split("=")[1] in result.stderr


@pytest.fixture(scope="module")
def masked_model(made):
    """The walkthrough's project with a masked model (1 epoch), pt and ONNX, generative and embedding."""
    sets = ["objective=masked", "model_name=mask", "training_spec.epochs=1", "wandb.mode=disabled"]
    run_cli("train", *[a for s in sets for a in ("--set", s)], cwd=made, check=True)
    return made


def infer(project, *sets):
    return run_cli("infer", *[a for s in sets for a in ("--set", s)], cwd=project)


def test_a_masked_model_fills_in_the_masked_items_alike_in_pt_and_onnx(masked_model):
    tables = {}
    for suffix in ("pt", "onnx"):
        out = f"fill-{suffix}"
        model = f"model_path=models/sequifier-mask-best-1.{suffix}"
        result = infer(masked_model, model, f"output_path={out}", "mask_positions=[-1, 0]")
        assert result.returncode == 0, result.stderr
        tables[suffix] = pd.read_csv(
            masked_model / out / "predictions" / "sequifier-mask-best-predictions.csv"
        )
    pt, onnx = tables["pt"], tables["onnx"]
    assert list(pt.columns) == ["sequenceId", "itemPosition", "itemId", "price"]
    assert (pt.sequenceId == onnx.sequenceId).all() and (pt.itemPosition == onnx.itemPosition).all()
    assert (pt.itemId == onnx.itemId).mean() > 0.99 and np.allclose(pt.price, onnx.price, atol=1e-3)
    data = pd.read_csv(masked_model / "data" / "example.csv")
    last = pt.groupby("sequenceId").itemPosition.max()  # every window's last item is filled in
    assert (last == data.groupby("sequenceId").itemPosition.max()[last.index]).all()
    items = set(zip(data.sequenceId, data.itemPosition))  # and its first, where it is no padding
    assert set(zip(pt.sequenceId, pt.itemPosition)) <= items and len(pt) > 1.5 * pt.sequenceId.nunique()
    assert set(pt.itemId) <= set(data.itemId)
    session = onnxruntime.InferenceSession(str(masked_model / "models" / "sequifier-mask-best-1.onnx"))
    assert [o.name for o in session.get_outputs()] == ["filled_itemId", "filled_price"]


def test_a_masked_embedding_model_writes_every_item_or_the_mean(masked_model):
    counts = {}
    for pooling in ("positions", "mean"):
        out = f"embed-{pooling}"
        result = infer(
            masked_model,
            "model_path=models/sequifier-mask-best-embedding-1.onnx",
            "model_type=embedding",
            f"output_path={out}",
            f"masked_embedding={pooling}",
        )
        assert result.returncode == 0, result.stderr
        table = pd.read_csv(masked_model / out / "embeddings" / "sequifier-mask-best-embeddings.csv")
        assert table.itemPosition.dtype == np.int64
        assert list(table.columns[:3]) == ["sequenceId", "subsequenceId", "itemPosition"]
        assert len(table.columns) == 3 + 32 and table.iloc[:, 3:].notna().all().all()
        counts[pooling] = table
    per_item, mean = counts["positions"], counts["mean"]
    assert not per_item.duplicated(["sequenceId", "subsequenceId", "itemPosition"]).any()
    assert len(mean) == len(per_item.groupby(["sequenceId", "subsequenceId"]))
    one = per_item[
        (per_item.sequenceId == mean.sequenceId[0]) & (per_item.subsequenceId == mean.subsequenceId[0])
    ]
    assert np.allclose(one.iloc[:, 3:].mean().to_numpy(), mean.iloc[0, 3:].to_numpy(dtype=float), atol=1e-5)


@pytest.mark.parametrize(
    "sets, expected",
    [
        (["autoregression=true", "autoregression_total_steps=3"], "true, but the model is masked"),
        (["mask_positions=[60]"], "mask_positions: 60 is outside the model's"),
        (["model_path=models/sequifier-default-best-1.pt", "mask_positions=[-1]"], "the model is causal"),
        (["model_path=models/sequifier-default-best-embedding-1.pt", "model_type=embedding",
          "masked_embedding=mean"], "masked_embedding: mean, but the model is causal"),
    ],
)  # fmt: skip
def test_settings_a_model_cannot_follow_are_refused(masked_model, sets, expected):
    if "default" in sets[0] and not (masked_model / "models" / "sequifier-default-best-1.pt").exists():
        run_cli("train", "--set", "training_spec.epochs=1", "--set", "wandb.mode=disabled", "--set",
                "export_onnx=false", cwd=masked_model, check=True)  # fmt: skip
    model = [] if "model_path" in sets[0] else ["model_path=models/sequifier-mask-best-1.pt"]
    result = infer(masked_model, *model, *sets, "output_path=refused")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert expected in result.stderr
    assert not (masked_model / "refused").exists() or not any((masked_model / "refused").rglob("*.csv"))
