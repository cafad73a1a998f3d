"""W&B tracking: real wandb in offline mode, read back from the run's .wandb log (no network, no mocks)."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from wandb_runs import find_runs, read_run

from sequifier.train.tracking import Tracker, resolve_mode

CONFIG = {"model": {"dim": 16, "heads": 2}, "lr": 0.001, "columns": ["item", "price"], "long": "x" * 40000}


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No API key can be found, W&B's own folders live in tmp_path, WANDB_MODE unset."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_DISABLED", "WANDB_SILENT"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    return monkeypatch


def test_resolve_mode(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert resolve_mode(None, {}, home) == "offline"
    assert resolve_mode({"mode": None}, {}, home) == "offline"
    assert resolve_mode({"mode": "disabled"}, {}, home) == "disabled"
    assert resolve_mode({"mode": "online"}, {"WANDB_MODE": "offline"}, home) == "offline"
    assert (
        resolve_mode({"mode": "offline"}, {"WANDB_MODE": "dryrun", "WANDB_API_KEY": "k"}, home) == "offline"
    )
    assert resolve_mode(None, {"WANDB_API_KEY": "k" * 40}, home) == "online"
    assert resolve_mode({"mode": "offline"}, {"WANDB_API_KEY": "k" * 40}, home) == "offline"
    with pytest.raises(ValueError, match="wandb.mode"):
        resolve_mode({"mode": "shared-ish"}, {}, home)

    (home / ".netrc").write_text("machine example.com login user password secret\n")
    assert resolve_mode(None, {}, home) == "offline"
    (home / ".netrc").write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    assert resolve_mode(None, {}, home) == "online"
    assert resolve_mode(None, {"WANDB_BASE_URL": "https://wandb.example.com"}, home) == "offline"
    # NETRC, when set, is the only file looked at (as in wandb)
    assert resolve_mode(None, {"NETRC": str(tmp_path / "missing")}, home) == "offline"

    elsewhere = tmp_path / "netrc"
    elsewhere.write_text("machine wandb.example.com login user password secret\n")
    environ = {"NETRC": str(elsewhere), "WANDB_BASE_URL": "https://wandb.example.com"}
    assert resolve_mode(None, environ, tmp_path / "nohome") == "online"
    (home / ".netrc").write_text("machine api.wandb.ai login user password " + "k" * 40 + "\nbogus\n")
    assert resolve_mode(None, {}, home) == "offline"  # unreadable netrc: warn, no key


def test_offline_run_is_written_and_read_back(tmp_path, wandb_env):
    run_dir = tmp_path / "outputs" / "run"  # created by the Tracker
    tracker = Tracker(None, CONFIG, run_dir)
    assert tracker.mode == "offline" and tracker.active
    assert tracker.directory.parent == run_dir / "wandb" and tracker.directory.name.startswith("offline-run-")
    losses, rates = [2.5, 1.25, 0.1 + 0.2], [1e-3, 5e-4, 1 / 3]
    for step in range(3):
        tracker.log({"train/loss": losses[step], "learning_rate": rates[step]}, step=step)
    tracker.summary({"best_epoch": 2})
    tracker.finish()
    tracker.finish()  # idempotent
    tracker.log({"train/loss": 0.0}, step=3)  # no-op after finish
    assert not tracker.active

    assert find_runs(tmp_path) == [tracker.directory]
    run = read_run(tracker.directory)
    assert run["config"] == CONFIG
    assert run["history"] == [
        {"train/loss": loss, "learning_rate": rate, "_step": step}
        for step, (loss, rate) in enumerate(zip(losses, rates))
    ]
    assert run["summary"] == {
        "train/loss": losses[-1],
        "learning_rate": rates[-1],
        "_step": 2,
        "best_epoch": 2,
    }
    assert (run["group"], run["name"], run["tags"], run["exit_code"]) == (None, None, [], 0)


def test_context_manager_finishes_a_failed_run(tmp_path, wandb_env):
    settings = {"mode": "offline", "group": "sweep-1", "name": "trial-3", "tags": ["gpu", "small"]}
    with pytest.raises(RuntimeError, match="diverged"):
        with Tracker(settings, {"seed": 7}, tmp_path) as tracker:
            tracker.log({"train/loss": 0.5}, step=0)
            raise RuntimeError("loss diverged")
    assert not tracker.active
    run = read_run(tracker.directory)
    assert run["history"] == [{"train/loss": 0.5, "_step": 0}]
    assert (run["config"], run["exit_code"]) == ({"seed": 7}, 1)
    assert (run["group"], run["name"], run["tags"]) == ("sweep-1", "trial-3", ["gpu", "small"])


def test_disabled_and_inactive_write_nothing_and_skip_the_import(tmp_path):
    """In a fresh interpreter, so that `wandb` missing from sys.modules means it was never imported."""
    script = """
import sys
from pathlib import Path
from sequifier.train.tracking import Tracker
root = Path(sys.argv[1])
for tracker in (Tracker({"mode": "disabled"}, {}, root / "a"), Tracker(None, {}, root / "b", active=False)):
    with tracker:
        tracker.log({"loss": 1.0}, step=0)
        tracker.summary({"best_epoch": 0})
    assert not tracker.active and tracker.directory is None
import os
os.environ["WANDB_MODE"] = "disabled"
with Tracker({"mode": "offline"}, {}, root / "c") as tracker:
    tracker.log({"loss": 1.0}, step=0)
assert tracker.mode == "disabled"
assert "wandb" not in sys.modules, "wandb was imported"
"""
    env = {"PATH": "", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_failing_init_leaves_tracking_off(tmp_path, wandb_env, caplog):
    with caplog.at_level(logging.WARNING, logger="sequifier.train.tracking"):
        tracker = Tracker({"mode": "offline", "tags": ["x" * 100]}, {}, tmp_path / "run")  # tags max 64 chars
    assert not tracker.active and tracker.directory is None
    assert "wandb.init failed" in caplog.text
    with tracker:
        tracker.log({"loss": 1.0}, step=0)
    assert find_runs(tmp_path) == []


def test_find_runs_sorted(tmp_path):
    for name in ("b/wandb/offline-run-2", "a/wandb/offline-run-1", "a/wandb/run-online"):
        (tmp_path / name).mkdir(parents=True)
    assert find_runs(tmp_path) == [tmp_path / "a/wandb/offline-run-1", tmp_path / "b/wandb/offline-run-2"]
    assert Path(tmp_path / "a/wandb/run-online") not in find_runs(tmp_path)
