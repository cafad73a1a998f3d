"""DDP through torchrun on CPU (gloo, 2 processes): the ranks agree and the losses are the real ones."""

import csv
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import made_project

from sequifier import config, distributed
from sequifier.export import load_bundle
from sequifier.train import Trainer, run
from sequifier.train_config import make_train_plan

SETTINGS = ["training_spec.epochs=3", "export_onnx=false", "wandb.mode=disabled", "training_spec.dropout=0.1"]
SETTINGS += ["training_spec.accumulation_steps=3"]  # 39 and 20 batches an epoch: a last, smaller group


def metrics(path) -> list:
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return made_project(tmp_path_factory.mktemp("ddp"))


def test_torchrun_two_processes_train_one_model(made, monkeypatch):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "sequifier", "train", "--model-name", "ddp", "--set", "training_spec.batch_size=32"]
    command += [item for setting in SETTINGS for item in ("--set", setting)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=made, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (made / "logs" / "sequifier-ddp.log").read_text()
    assert "2 process(es)" in log and "the 2 ranks end with identical weights" in log
    rows = metrics(made / "logs" / "sequifier-ddp-metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]  # written once, by rank 0

    # the validation loss reduced over the ranks is the loss of the whole validation split
    best = min(rows, key=lambda r: float(r["validation_loss"]))
    model, bundle = load_bundle(made / "models" / f"sequifier-ddp-best-{best['epoch']}.pt")
    monkeypatch.chdir(made)
    plan = make_train_plan(bundle["config"])
    trainer = Trainer(plan, distributed.Process(0, 1, torch.device("cpu")))
    trainer.model.load_state_dict(model.state_dict())
    total, per_target, _ = trainer.validate()
    assert total == pytest.approx(float(best["validation_loss"]), rel=1e-5)
    assert per_target["itemId"] == pytest.approx(float(best["validation_loss_itemId"]), rel=1e-5)

    # two ranks of 32 windows learn as well as one process of 64
    overrides = {"project_root": str(made), "model_name": "single", "training_spec.batch_size": 64}
    overrides.update({key: yaml.safe_load(v) for key, v in (s.split("=") for s in SETTINGS)})
    single = run(config.load("train", made / "configs" / "train.yaml", overrides))
    assert float(rows[-1]["validation_loss"]) < float(rows[0]["validation_loss"])
    assert float(rows[-1]["validation_loss"]) == pytest.approx(single["best_loss"], rel=0.05)
