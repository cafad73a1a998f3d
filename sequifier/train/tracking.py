"""Experiment tracking for the training loop: one thin wrapper around Weights & Biases.

Tracking never needs a network by default (offline unless an API key is configured), never kills
training (a failing W&B is logged and switched off), and does nothing on DDP ranks other than 0.
Online without a key, or without a connection to the W&B server (a compute node), it logs
offline and says so: `wandb sync` uploads the run later. The run's summary holds the lowest
validation loss (define_metric), and the best model is logged as an artifact.
"""

from __future__ import annotations

import http.client
import logging
import netrc
import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

MODES = ("online", "offline", "disabled")
_ALIASES = {"dryrun": "offline", "run": "online"}
DEFAULTS = {
    "mode": None,
    "project": "sequifier",
    "entity": None,
    "group": None,
    "name": None,
    "tags": [],
    "notes": None,
    "job_type": "train",
}
REACH_SECONDS = 5.0  # how long a connection to the W&B server may take before logging offline
BEST_LOSS = "validation/loss"  # its summary: the lowest (min) and the latest (last)


def _has_api_key(environ: Mapping[str, str], home: Path) -> bool:
    """Whether wandb would find an API key: WANDB_API_KEY, or a netrc entry for the W&B host."""
    if environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    if environ.get("NETRC"):  # like wandb: NETRC, when set, is the only file looked at
        candidates = [Path(environ["NETRC"]).expanduser()]
    else:
        candidates = [home / ".netrc", home / "_netrc"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None or not host:
        return False
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (netrc.NetrcParseError, OSError) as error:
        logger.warning("Could not read netrc file %s: %s", path, error)
        return False
    return bool(entry and entry[2])


def resolve_mode(settings: Mapping | None, environ: Mapping[str, str], home: Path) -> str:
    """The W&B mode: env WANDB_MODE, else settings["mode"], else online with an API key, else offline."""
    for source, value in (
        ("WANDB_MODE", environ.get("WANDB_MODE")),
        ("wandb.mode", (settings or {}).get("mode")),
    ):
        if value:
            mode = _ALIASES.get(str(value).lower(), str(value).lower())
            if mode not in MODES:
                raise ValueError(f"{source} is {value!r}; expected one of {', '.join(MODES)}")
            return mode
    return "online" if _has_api_key(environ, home) else "offline"


def offline_reason(environ: Mapping[str, str], home: Path, timeout: float = REACH_SECONDS) -> str | None:
    """Why an online run would fail or hang here (no API key; no answer from the W&B server within
    `timeout` seconds, through the proxy of HTTPS_PROXY if any), or None when it can start."""
    if not _has_api_key(environ, home):
        return "no W&B API key is configured (WANDB_API_KEY or `wandb login`)"
    url = environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # an answer, whatever it says: the server is there
    except (OSError, ValueError, http.client.HTTPException) as error:
        why = getattr(error, "reason", None) or error or type(error).__name__
        return f"the W&B server {url} does not answer within {timeout:g} s ({why})"
    return None


class Tracker:
    """Logs a training run to W&B; every method is a no-op when tracking is off or never started."""

    def __init__(
        self,
        settings: dict | None,
        config: dict,
        run_dir: Path,
        active: bool = True,
        run_id: str | None = None,
    ):
        """`run_id` continues that W&B run (a resumed training) instead of starting a new one."""
        self._run = None
        self._directory: Path | None = None
        self.mode = "disabled"
        if not active:
            return
        settings = {**DEFAULTS, **{k: v for k, v in (settings or {}).items() if v is not None}}
        self.mode = resolve_mode(settings, os.environ, Path.home())
        if self.mode == "disabled":
            return
        if self.mode == "online" and (reason := offline_reason(os.environ, Path.home())):
            logger.warning("W&B logs offline: %s; `wandb sync` uploads the run later", reason)
            self.mode = "offline"  # checked before wandb.init: a failed online init can block an offline one
        try:
            import wandb

            Path(run_dir).mkdir(parents=True, exist_ok=True)
            self._run = wandb.init(
                project=settings["project"],
                entity=settings["entity"],
                group=settings["group"],
                name=settings["name"],
                tags=list(settings["tags"] or []),
                notes=settings["notes"],
                job_type=settings["job_type"],
                config=config,
                dir=str(run_dir),
                mode=self.mode,
                reinit="create_new",
                id=run_id,
                resume="allow" if run_id else None,
                settings=wandb.Settings(silent=True, console="off", save_code=False),
            )
        except Exception as error:  # tracking must never stop training
            logger.warning("W&B tracking is off: wandb.init failed (%s: %s)", type(error).__name__, error)
            self._run = None
            return
        self._directory = Path(self._run.settings.sync_dir)
        logger.info("W&B tracking (%s) in %s", self.mode, self.directory)
        self._call("define_metric", self._run.define_metric, BEST_LOSS, summary="min,last")

    @property
    def run_id(self) -> str | None:
        return self._run.id if self._run is not None else None

    @property
    def active(self) -> bool:
        return self._run is not None

    @property
    def directory(self) -> Path | None:
        """The run's local folder (offline-run-* or run-*), kept after finish; None if never started."""
        return self._directory

    def _call(self, what: str, function, *args, **kwargs) -> None:
        try:
            function(*args, **kwargs)
        except Exception as error:  # a broken W&B must not stop training; drop the run
            logger.warning(
                "W&B %s failed, tracking is off from here (%s: %s)", what, type(error).__name__, error
            )
            self._run = None

    def log(self, metrics: dict, step: int) -> None:
        if self._run is not None:
            self._call("log", self._run.log, metrics, step=step)

    def summary(self, values: dict) -> None:
        if self._run is not None:
            self._call("summary", self._run.summary.update, values)

    def log_model(self, name: str, files: list, metadata: dict) -> None:
        """The best model's `files` as a version of the artifact `name` (type model, aliases best
        and epoch-N of metadata's best_epoch); offline, W&B keeps a copy of them (in its data
        folder, WANDB_DATA_DIR) until `wandb sync` uploads the run."""
        if self._run is None or not files:
            return
        import wandb

        def log() -> None:
            artifact = wandb.Artifact(re.sub(r"[^\w.-]", "-", name), type="model", metadata=metadata)
            for path in files:
                artifact.add_file(str(path), name=Path(path).name)
            self._run.log_artifact(artifact, aliases=["best", f"epoch-{metadata.get('best_epoch')}"])

        self._call("log_artifact", log)

    def finish(self, failed: bool = False) -> None:
        """Close the run (exit code 1 when failed); idempotent."""
        run, self._run = self._run, None
        if run is None:
            return
        try:
            run.finish(exit_code=1 if failed else 0)
            import wandb

            wandb.teardown()  # waits until W&B's service has written the run's files, then stops it
        except Exception as error:
            logger.warning("W&B finish failed (%s: %s)", type(error).__name__, error)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        self.finish(failed=exc_type is not None)
        return False
