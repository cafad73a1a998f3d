"""`sequifier train`: what a run writes, what it logs, and that it is reproducible and resumable."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import made_project, run_cli
from wandb_runs import find_runs, read_run

from sequifier import config
from sequifier.model.export import load_bundle
from sequifier.train import run
from sequifier.train.datasets import InMemoryWindows
from sequifier.train.plan import make_train_plan
from sequifier.train.trainer import Trainer

LOSSES = ("train_loss", "validation_loss", "train_loss_itemId", "validation_loss_price")


def read_metrics(path) -> list:
    """The model's rows of a metrics CSV (kinds epoch and interval; not the baselines)."""
    with open(path) as handle:
        return [row for row in csv.DictReader(handle) if not row["kind"].startswith("baseline")]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A project made by `sequifier make`, preprocessed, trained once by the CLI with W&B offline."""
    root = tmp_path_factory.mktemp("train")
    project = made_project(root)
    env = {**os.environ, "WANDB_MODE": "offline", "HOME": str(root), "WANDB_CONFIG_DIR": str(root / ".wandb")}
    result = subprocess.run(
        [sys.executable, "-m", "sequifier", "train"], cwd=project, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    return project


def train_in_process(project, **overrides) -> dict:
    overrides = {"project_root": str(project), "export_onnx": False, "wandb.mode": "disabled", **overrides}
    return run(config.load("train", project / "configs" / "train.yaml", overrides))


def test_make_preprocess_train_writes_models_checkpoints_and_metrics(made):
    rows = read_metrics(made / "logs" / "sequifier-default-metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4, 5]  # 0: the untrained model
    assert all(r["kind"] == "epoch" for r in rows)
    losses = [float(r["validation_loss"]) for r in rows]
    assert losses[-1] < losses[1] < losses[0]
    best = 1 + int(np.argmin(losses[1:]))
    for row in rows:  # the total is the sum of the per-target losses (weights 1)
        parts = float(row["validation_loss_itemId"]) + float(row["validation_loss_price"])
        assert float(row["validation_loss"]) == pytest.approx(parts, rel=1e-9)
    models = sorted(p.name for p in (made / "models").iterdir())
    expected = [
        f"sequifier-default-{label}{kind}-{epoch}.{suffix}"
        for label, epoch in (("best", best), ("last", 5))
        for kind in ("", "-embedding")
        for suffix in ("onnx", "pt")
    ]
    assert models == sorted(expected)
    checkpoints = sorted(p.name for p in (made / "checkpoints").iterdir())
    assert checkpoints == [f"sequifier-default-epoch-{e}.pt" for e in range(3, 6)]  # keep_checkpoints: 3
    assert "validation loss" in (made / "logs" / "sequifier-default.log").read_text()


def test_wandb_offline_run_holds_the_metrics_of_the_csv(made):
    rows = read_metrics(made / "logs" / "sequifier-default-metrics.csv")
    (folder,) = find_runs(made / "logs")
    logged = read_run(folder)
    assert logged["name"] == "default" and logged["config"]["model_name"] == "default"
    assert logged["config"]["model_spec"]["dim_model"] == 32
    history = [h for h in logged["history"] if "validation/loss" in h]
    assert [h["epoch"] for h in history] == [int(r["epoch"]) for r in rows]
    for h, row in zip(history, rows):
        assert h["validation/loss"] == pytest.approx(float(row["validation_loss"]), rel=1e-12)
        assert h["train/loss_itemId"] == pytest.approx(
            float(row["train_loss_itemId"]), rel=1e-12, nan_ok=True
        )
        assert h["learning_rate"] == pytest.approx(float(row["learning_rate"]), rel=1e-12)
        assert h["windows_per_s"] > 0 or h["epoch"] == 0
    best = 1 + int(np.argmin([float(r["validation_loss"]) for r in rows[1:]]))
    assert logged["summary"]["best_epoch"] == best
    assert logged["summary"]["best_validation_loss"] == pytest.approx(
        min(h["validation/loss"] for h in history[1:])
    )
    assert history[0]["epoch"] == 0 and history[0]["validation/accuracy_itemId"] > 0
    assert logged["summary"]["baseline/best/loss"] > 0


def test_wandb_run_is_a_train_job_with_the_best_loss_and_the_best_model(made):
    """The W&B run of a training: job type train, the lowest validation loss in its summary (as a
    cluster user sorts runs by it), and the best model as an artifact whose files W&B keeps for
    `wandb sync` (offline)."""
    rows = read_metrics(made / "logs" / "sequifier-default-metrics.csv")
    (folder,) = find_runs(made / "logs")
    logged = read_run(folder)
    assert logged["job_type"] == "train"
    lowest = min(float(r["validation_loss"]) for r in rows)
    assert logged["summary"]["validation/loss"]["min"] == pytest.approx(lowest, rel=1e-12)
    assert logged["summary"]["validation/loss"]["last"] == pytest.approx(float(rows[-1]["validation_loss"]))
    assert logged["summary"]["best_validation_loss"] == pytest.approx(lowest, rel=1e-12)
    (artifact,) = logged["artifacts"]
    best = logged["summary"]["best_epoch"]
    assert (artifact["name"], artifact["type"]) == ("sequifier-default", "model")
    assert set(artifact["aliases"]) >= {"best", f"epoch-{best}"}
    assert artifact["metadata"]["best_epoch"] == best
    assert artifact["metadata"]["best_validation_loss"] == pytest.approx(lowest, rel=1e-12)
    exported = sorted(p.name for p in (made / "models").iterdir() if "-best" in p.name)
    assert sorted(f["path"] for f in artifact["files"]) == exported and len(exported) == 4
    for found in artifact["files"]:  # the copies that `wandb sync` uploads are there, whole
        assert Path(found["local_path"]).stat().st_size == found["size"]
        assert found["size"] == (made / "models" / found["path"]).stat().st_size


def _validation_inputs(project, bundle, n=50):
    plan = make_train_plan(bundle["config"])
    windows = InMemoryWindows(plan.window_source(plan.validation_path))
    batch = next(windows.batches(n, shuffle=False))
    return {name: batch[name][:, :-1] for name in bundle["config"]["input_columns"]}


def test_pt_bundle_is_self_contained_and_onnx_agrees(made, monkeypatch):
    (best,) = (made / "models").glob("sequifier-default-best-[0-9]*.pt")
    model, bundle = load_bundle(best)
    assert bundle["metadata"]["id_maps"]["itemId"] and bundle["config"]["target_columns"] == [
        "itemId",
        "price",
    ]
    monkeypatch.chdir(made)  # the bundle's config has the project's relative paths
    inputs = _validation_inputs(made, bundle)
    with torch.no_grad():
        expected = model(inputs)
        embedding = model.hidden(inputs)[:, -1]
    feed = {name: tensor.numpy() for name, tensor in inputs.items()}
    session = ort.InferenceSession(str(best.with_suffix(".onnx")))
    logits, price = session.run(None, feed)
    assert logits.shape == (50, bundle["metadata"]["n_classes"]["itemId"])
    np.testing.assert_allclose(logits, expected["itemId"][:, -1].numpy(), atol=1e-4)
    np.testing.assert_allclose(price, expected["price"][:, -1].numpy(), atol=1e-4)
    (embedding_file,) = (made / "models").glob("sequifier-default-best-embedding-*.onnx")
    (onnx_embedding,) = ort.InferenceSession(str(embedding_file)).run(None, feed)
    assert onnx_embedding.shape == (50, 32)
    np.testing.assert_allclose(onnx_embedding, embedding.numpy(), atol=1e-4)


def test_same_seed_same_losses_and_resume_continues_exactly(made, monkeypatch):
    settings = {"training_spec.epochs": 4, "training_spec.log_interval": 7, "training_spec.dropout": 0.1}
    settings["training_spec.accumulation_steps"] = 2
    first = read_metrics_of(made, "a", settings)
    again = read_metrics_of(made, "b", settings)
    assert [[r[k] for k in LOSSES] for r in first] == [[r[k] for k in LOSSES] for r in again]
    assert len(first) == 1 + 4 + 4 * (1241 // 64 // 7)  # epoch rows (from 0) and interval rows
    # the template's cosine (no T_max) follows this 4-epoch run: down every epoch, never to 0
    rates = [float(r["learning_rate"]) for r in first if r["kind"] == "epoch"]
    assert rates == sorted(rates, reverse=True) and len(set(rates)) == 4 and rates[-1] > 0
    other = read_metrics_of(made, "c", {**settings, "seed": 7})
    assert other[-1]["validation_loss"] != first[-1]["validation_loss"]
    # a run continued for more epochs is the longer run when its schedule's horizon is fixed
    fixed = {**settings, "training_spec.scheduler": {"name": "CosineAnnealingLR", "T_max": 4}}
    read_metrics_of(made, "d", {**fixed, "training_spec.epochs": 2})
    resumed = read_metrics_of(made, "d", {**fixed, "training_spec.continue_training": True})
    assert [[r[k] for k in LOSSES] for r in resumed] == [[r[k] for k in LOSSES] for r in first]

    interrupted_at_step(monkeypatch, 13, made, "e", settings)  # in the middle of epoch 2
    assert (made / "checkpoints" / "sequifier-e-epoch-1-batch-6.pt").exists()
    resumed = read_metrics_of(made, "e", {**settings, "training_spec.continue_training": True})
    assert [[r[k] for k in LOSSES] for r in resumed] == [[r[k] for k in LOSSES] for r in first]
    assert not list((made / "checkpoints").glob("sequifier-e-*-batch-*"))  # superseded at the epoch's end


def test_ctrl_c_during_the_step_before_an_interval_validation_keeps_its_row(made, monkeypatch):
    settings = {"training_spec.epochs": 2, "training_spec.log_interval": 7, "training_spec.dropout": 0.1}
    settings["training_spec.accumulation_steps"] = 2
    first = read_metrics_of(made, "f", settings)
    interrupted_at_step(monkeypatch, 14, made, "g", settings)  # batches 6-7 of epoch 2; 7 is validated
    assert (made / "checkpoints" / "sequifier-g-epoch-1-batch-8.pt").exists()
    resumed = read_metrics_of(made, "g", {**settings, "training_spec.continue_training": True})
    assert [(r["epoch"], r["batch"], r["kind"]) for r in resumed] == [
        (r["epoch"], r["batch"], r["kind"]) for r in first
    ]
    assert [[r[k] for k in LOSSES] for r in resumed] == [[r[k] for k in LOSSES] for r in first]


def interrupted_at_step(monkeypatch, interrupted: int, project, name, settings) -> None:
    """Train with a Ctrl-C during optimizer step `interrupted` (counted from 1)."""
    steps, step = 0, Trainer._apply_gradients

    def interrupted_step(trainer, *args):
        nonlocal steps
        steps += 1
        if steps == interrupted:
            os.kill(os.getpid(), signal.SIGINT)
        return step(trainer, *args)

    monkeypatch.setattr(Trainer, "_apply_gradients", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        read_metrics_of(project, name, settings)
    monkeypatch.setattr(Trainer, "_apply_gradients", step)


def read_metrics_of(project, name, settings) -> list:
    train_in_process(project, model_name=name, **settings)
    return read_metrics(project / "logs" / f"sequifier-{name}-metrics.csv")


def test_ctrl_c_saves_a_checkpoint_and_training_resumes_from_it(made):
    args = [
        sys.executable,
        "-m",
        "sequifier",
        "train",
        "--model-name",
        "stopped",
        "--set",
        "training_spec.epochs=500",
    ]
    args += ["--set", "export_onnx=false", "--set", "wandb.mode=disabled"]
    process = subprocess.Popen(args, cwd=made, stderr=subprocess.PIPE, text=True)
    first = made / "checkpoints" / "sequifier-stopped-epoch-1.pt"
    deadline = time.monotonic() + 60
    while not first.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 130, stderr
    assert "interrupted: saving a checkpoint" in stderr and "Traceback" not in stderr
    saved = sorted(p.name for p in (made / "checkpoints").glob("sequifier-stopped-*"))
    last = max(int(name.split("-epoch-")[1].split("-")[0].split(".")[0]) for name in saved)
    assert not list((made / "models").glob("sequifier-stopped-*"))
    result = run_cli(
        "train", "--model-name", "stopped", "--set", f"training_spec.epochs={last + 1}",
        "--set", "training_spec.continue_training=true", "--set", "export_onnx=false",
        "--set", "wandb.mode=disabled", cwd=made,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stderr
    epochs = [int(r["epoch"]) for r in read_metrics(made / "logs" / "sequifier-stopped-metrics.csv")]
    assert epochs == list(range(0, last + 2))
    assert (made / "models" / f"sequifier-stopped-last-{last + 1}.pt").exists()


def test_streamed_and_bf16_runs_learn_like_the_default(made):
    settings = {"training_spec.epochs": 2}
    default = train_in_process(made, model_name="memory", **settings)
    streamed = train_in_process(
        made,
        model_name="streamed",
        **settings,
        **{"training_spec.load_full_data_to_ram": False, "training_spec.shuffle_buffer_size": 300},
    )
    bf16 = train_in_process(made, model_name="bf16", **settings, **{"training_spec.mixed_precision": "bf16"})
    for other in (streamed, bf16):
        assert other["best_loss"] == pytest.approx(default["best_loss"], rel=0.03)
        assert other["best_loss"] != default["best_loss"]


def test_a_resumed_training_continues_its_wandb_run(made, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    settings = {"model_name": "tracked", "wandb.mode": "offline", "logs_path": "logs-tracked"}
    train_in_process(made, **settings, **{"training_spec.epochs": 1})
    resume = {"training_spec.epochs": 2, "training_spec.continue_training": True}
    train_in_process(made, **settings, **resume)
    first, second = (read_run(folder) for folder in find_runs(made / "logs-tracked"))
    assert first["id"] and first["id"] == second["id"]  # folders of one second may be renamed: the id counts
    logged = [h["epoch"] for run in (first, second) for h in run["history"]]
    assert logged == [0, 1, 2]
