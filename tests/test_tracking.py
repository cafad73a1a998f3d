"""W&B tracking: real wandb in offline mode, read back from the run's .wandb log (no network, no mocks)."""

import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO
from wandb_runs import find_runs, read_run

from sequifier.train.tracking import Tracker, offline_reason, resolve_mode

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


def test_a_run_is_a_train_job_whose_summary_keeps_the_lowest_validation_loss(tmp_path, wandb_env):
    tracker = Tracker({"mode": "offline"}, {}, tmp_path / "run")
    for step, loss in enumerate([3.0, 1.5, 2.0]):
        tracker.log({"validation/loss": loss}, step=step)
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights" * 100)
    tracker.log_model("sequifier-m/1", [model], {"best_epoch": 1, "best_validation_loss": 1.5})
    tracker.finish()
    run = read_run(tracker.directory)
    assert run["job_type"] == "train"
    assert run["summary"]["validation/loss"] == {"min": 1.5, "last": 2.0}
    (artifact,) = run["artifacts"]
    assert (artifact["name"], artifact["type"]) == ("sequifier-m-1", "model")  # made a valid name
    assert set(artifact["aliases"]) >= {"best", "epoch-1"}
    (found,) = artifact["files"]
    assert found["path"] == "model.pt" and Path(found["local_path"]).read_bytes() == model.read_bytes()


@pytest.mark.parametrize("reach", ["no key", "refused"])
def test_online_without_a_key_or_a_server_logs_offline_and_says_so(tmp_path, wandb_env, caplog, reach):
    """A compute node: WANDB_MODE=online, but no key, or a server that refuses the connection:
    the run is written offline at once (no wait for W&B's 90 s init timeout), with a warning."""
    wandb_env.setenv("WANDB_MODE", "online")
    if reach == "refused":
        with socket.socket() as probe:  # a port with nobody listening on it
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        wandb_env.setenv("WANDB_API_KEY", "k" * 40)
        wandb_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="sequifier.train.tracking"):
        with Tracker({"job_type": "search"}, {"seed": 1}, tmp_path / "run") as tracker:
            tracker.log({"validation/loss": 0.5}, step=0)
    assert time.perf_counter() - started < 30
    assert tracker.mode == "offline" and tracker.directory.name.startswith("offline-run-")
    expected = "no W&B API key" if reach == "no key" else f"127.0.0.1:{port} does not answer"
    assert "W&B logs offline" in caplog.text and expected in caplog.text and "wandb sync" in caplog.text
    run = read_run(tracker.directory)
    assert (run["job_type"], run["summary"]["validation/loss"]) == ("search", {"min": 0.5, "last": 0.5})


def test_a_server_that_does_not_answer_is_given_up_on_quickly():
    """A connection that opens but gets no answer (a proxy or firewall that holds it): the check
    gives up after `timeout` seconds, not W&B's 90."""
    with socket.socket() as silent:  # listens, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        environ = {"WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": url}
        started = time.perf_counter()
        reason = offline_reason(environ, Path("/nonexistent"), timeout=0.5)
        assert reason.startswith(f"the W&B server {url} does not answer within 0.5 s")
        assert time.perf_counter() - started < 5
    with socket.socket() as server:  # answers (even an error): the server is there
        server.bind(("127.0.0.1", 0))
        server.listen()
        environ["WANDB_BASE_URL"] = f"http://127.0.0.1:{server.getsockname()[1]}"

        def answer():
            connection, _ = server.accept()
            connection.recv(4096)
            connection.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
            connection.close()

        threading.Thread(target=answer, daemon=True).start()
        assert offline_reason(environ, Path("/nonexistent"), timeout=5) is None
