"""DDP through torchrun on CPU (gloo, 2 processes): the ranks agree and the losses are the real ones."""

import csv
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml
from conftest import items_of_splits, made_project
from losses_by_hand import losses_by_hand, read_windows

from sequifier import config
from sequifier.model.export import load_bundle
from sequifier.train import run

SETTINGS = ["training_spec.epochs=3", "export_onnx=false", "wandb.mode=disabled", "training_spec.dropout=0.1"]
SETTINGS += ["training_spec.accumulation_steps=3"]  # 39 and 20 batches an epoch: a last, smaller group


def metrics(path) -> list:
    """The model's rows (epoch and interval) of a metrics CSV."""
    with open(path) as handle:
        return [row for row in csv.DictReader(handle) if not row["kind"].startswith("baseline")]


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
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]  # written once, by rank 0

    # the validation loss reduced over the ranks is the loss of the validation split's items
    best = min(rows[1:], key=lambda r: float(r["validation_loss"]))
    model, bundle = load_bundle(made / "models" / f"sequifier-ddp-best-{best['epoch']}.pt")
    table = pd.read_csv(made / "data" / "example.csv")
    items = items_of_splits(table, bundle["metadata"]["split_ratios"])[1]
    windows = read_windows(
        made / bundle["metadata"]["split_paths"][1], "parquet", bundle["metadata"]["seq_length"]
    )
    by_hand = losses_by_hand(model, bundle, windows, items)
    assert float(best["validation_loss"]) == pytest.approx(by_hand["total"], rel=1e-5)
    assert float(best["validation_loss_itemId"]) == pytest.approx(by_hand["itemId"], rel=1e-5)
    assert float(best["validation_accuracy_itemId"]) == pytest.approx(by_hand["accuracy_itemId"], rel=1e-6)

    # two ranks of 32 windows learn as well as one process of 64
    overrides = {"project_root": str(made), "model_name": "single", "training_spec.batch_size": 64}
    overrides.update({key: yaml.safe_load(v) for key, v in (s.split("=") for s in SETTINGS)})
    single = run(config.load("train", made / "configs" / "train.yaml", overrides))
    assert float(rows[-1]["validation_loss"]) < float(rows[0]["validation_loss"])
    assert float(rows[-1]["validation_loss"]) == pytest.approx(single["best_loss"], rel=0.05)


def test_a_process_without_validation_windows_takes_part_in_every_sum(project):
    """One validation window for two processes: the second validates nothing, yet adds its zeros to
    every sum (baselines, accuracy, class shares), so the figures are the one window's."""
    table = pd.concat(
        [
            pd.DataFrame(
                {"sequenceId": s, "itemPosition": range(n), "item": [f"v{i % 3}" for i in range(s, s + n)]}
            )
            for s, n in [*((s, 10) for s in range(20)), (20, 30)]
        ]
    )
    project.write_data(table)
    project.preprocess(seq_length=4, split_ratios=[0.95, 0.05])
    assert project.metadata()["n_windows"]["validation"] == 1
    project.write_train_config(epochs=1, class_share_log_columns=["item"])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "sequifier", "train", "--model-name", "lone"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=project.root, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(project.root / "logs" / "sequifier-lone-metrics.csv") as handle:
        rows = {(row["kind"], row["epoch"]): row for row in csv.DictReader(handle)}
    kinds = ["baseline_last_value", "baseline_training_prior", "baseline_best", "epoch"]
    assert set(rows) == {(kind, "0") for kind in kinds} | {("epoch", "1")}
    # the baselines and the untrained model (the same initial weights) match one process's figures
    run(config.load("train", project.root / "configs" / "train.yaml", {"model_name": "single"}))
    with open(project.root / "logs" / "sequifier-single-metrics.csv") as handle:
        single = {(row["kind"], row["epoch"]): row for row in csv.DictReader(handle)}
    for key in [(kind, "0") for kind in kinds]:
        for figure in ("validation_loss_item", "validation_accuracy_item"):
            assert float(rows[key][figure]) == pytest.approx(
                float(single[key][figure]), rel=1e-6, nan_ok=True
            )


def torchrun(made, name, *settings) -> list:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "sequifier", "train", "--model-name", name, "--set", "training_spec.batch_size=16"]
    return command + [item for setting in [*SETTINGS, *settings] for item in ("--set", setting)]


@pytest.fixture(scope="module")
def whole(made) -> str:
    """A 2-process training that nothing stops, for the stopped ones to end as."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(torchrun(made, "whole"), cwd=made, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return "whole"


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_both_ranks_at_the_same_step_with_one_checkpoint(made, whole, number):
    """SIGTERM to torchrun (as a time limit sends it), or Ctrl-C (SIGINT to the whole process group,
    as a terminal sends it), in the middle of an epoch: each rank stops at the same batch boundary
    (exit 75, or 130 for Ctrl-C), one checkpoint is saved there, and the resumed run ends as an
    uninterrupted one."""
    env, name = {**os.environ, "OMP_NUM_THREADS": "1"}, f"cut-{number.name}"
    process = subprocess.Popen(
        torchrun(made, name), cwd=made, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    first, deadline = made / "checkpoints" / f"sequifier-{name}-epoch-1.pt", time.monotonic() + 300
    while not first.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    if number == signal.SIGINT:
        os.killpg(process.pid, number)
    else:
        process.send_signal(number)
    stderr = process.communicate(timeout=300)[1]
    assert process.returncode != 0 and "/sequifier/" not in stderr, stderr[-3000:]  # torchrun: its own
    how = "interrupted" if number == signal.SIGINT else "stopped by SIGTERM"
    stops = re.findall(rf"sequifier train: {how} at epoch (\d+) batch (\d+); its checkpoint", stderr)
    assert len(stops) == 2 and stops[0] == stops[1], stderr[-3000:]  # both ranks, the same step
    assert stderr.count("saving a checkpoint to resume from") == 2
    epoch, batch = map(int, stops[0])
    saved = sorted(p.name for p in (made / "checkpoints").glob(f"sequifier-{name}-*"))
    expected = f"sequifier-{name}-epoch-{epoch - 1}{f'-batch-{batch}' if batch else ''}.pt"
    assert saved == sorted({f"sequifier-{name}-epoch-1.pt", expected}), saved
    assert not list((made / "models").glob(f"sequifier-{name}-*"))

    resumed = torchrun(made, name, "training_spec.continue_training=true")
    again = subprocess.run(resumed, cwd=made, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from checkpoints/{expected}" in again.stderr
    cut, uncut = (
        [(r["epoch"], r["kind"], r["train_loss"], r["validation_loss"]) for r in metrics(path)]
        for path in (made / "logs" / f"sequifier-{n}-metrics.csv" for n in (name, whole))
    )
    assert cut == uncut
    weights = [
        load_bundle(made / "models" / f"sequifier-{n}-last-3.pt")[0].state_dict() for n in (name, whole)
    ]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[1])


def test_a_masked_model_under_two_processes_validates_the_masks_of_one(made):
    """objective: masked on 2 processes: the ranks agree, and the validation masks are drawn per
    window, so the untrained model's validation loss is the one a single process reports."""
    settings = ["objective=masked", "training_spec.epochs=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        torchrun(made, "masked2", *settings), cwd=made, capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the 2 ranks end with identical weights" in (made / "logs" / "sequifier-masked2.log").read_text()
    overrides = {"project_root": str(made), "model_name": "masked1", "training_spec.batch_size": 16}
    overrides.update({key: yaml.safe_load(v) for key, v in (s.split("=") for s in [*SETTINGS, *settings])})
    run(config.load("train", made / "configs" / "train.yaml", overrides))
    two, one = (metrics(made / "logs" / f"sequifier-{name}-metrics.csv") for name in ("masked2", "masked1"))
    assert float(two[0]["validation_loss"]) == pytest.approx(float(one[0]["validation_loss"]), rel=1e-6)
    assert float(two[1]["validation_loss"]) < float(two[0]["validation_loss"])
