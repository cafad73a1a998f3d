"""Experiment tracking for the training loop: one thin wrapper around Weights & Biases.

Tracking never needs a network by default (offline unless an API key is configured), never kills
training (a failing W&B is logged and switched off), and does nothing on DDP ranks other than 0.
"""

from __future__ import annotations

import logging
import netrc
import os
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
}


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
