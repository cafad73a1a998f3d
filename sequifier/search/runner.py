"""`sequifier hyperparameter-search`: a search trained run by run, then ranked.

In output_path/{search_name}/: runs.csv (run id -> its point), runs/{run}.yaml (the run's complete
train config), runs/{run}.status.json (its outcome), logs/{run}.log, leaderboard.csv and curves.png
(validation loss per epoch). Every run is `sequifier train` in a process of its own (`jobs` at a
time, each a `sequifier.train.lifecycle.Run`, as the workflow's train jobs), so a run that fails
does not stop the others: one with bad settings is marked failed in the leaderboard, one that
crashed or was killed incomplete, and both are tried again by the next search. A run done with
the config it has now is not trained again.
"""

import logging
import os
import sys
import time
from pathlib import Path

import yaml

from sequifier import config as stage_config
from sequifier.files import atomic_path, read_json
from sequifier.search import leaderboard, space
from sequifier.train.lifecycle import Run, launch_command
from sequifier.train.metrics import metrics_file

log = logging.getLogger(__name__)


class Search:
    def __init__(self, loaded: dict, source: str):
        self.config, self.source = loaded, source
        self.root = Path(loaded["project_root"])
        self.folder = self.root / loaded["output_path"] / loaded["search_name"]
        train_path = self.root / loaded["train_config_path"]
        base = stage_config.read_yaml(train_path)
        base["project_root"] = str(self.root / base.get("project_root", "."))  # one project: the search's
        points = space.expand(
            loaded["space"], loaded["strategy"], loaded["n_samples"], loaded["seed"], source
        )
        self.points = space.run_ids(points)
        self.configs = space.run_configs(self.points, base, source, self.overrides)
        space.check_init_from(self.points, self.configs, source, str(train_path))

    def overrides(self, name: str, point: dict) -> dict:
        """What a run sets besides its point: its name, and its W&B group, name and tags."""
        return {
            "model_name": name,
            "wandb.group": self.config["search_name"],
            "wandb.name": name,
            "wandb.tags": space.tags(point),
        }

    def config_path(self, name: str) -> Path:
        return self.folder / "runs" / f"{name}.yaml"

    def write_runs(self) -> None:
        leaderboard.write_table(self.folder / "runs.csv", space.points_table(self.points))
        for name, resolved in self.configs.items():
            text = f"# Train config of run {name} of search {self.config['search_name']}.\n"
            text += yaml.safe_dump(resolved, sort_keys=False)
            path = self.config_path(name)
            if not path.is_file() or path.read_text() != text:
                with atomic_path(path) as tmp:
                    tmp.write_text(text)

    def lifecycle(self, name: str, threads: int | None = None) -> Run:
        """The run as `sequifier train` of its config, its outcome in runs/{name}.status.json."""
        return Run(
            name,
            launch_command(self.config_path(name), python=sys.executable),
            status=self.folder / "runs" / f"{name}.status.json",
            log=self.folder / "logs" / f"{name}.log",
            threads=threads,
            inputs=[self.config_path(name), *self._init_from(name)],
        )

    def _init_from(self, name: str) -> list:
        """The model a run starts from (init_from), if any: a new one trains the run again."""
        source = space.init_from_file(self.configs[name])
        return [source] if source is not None else []

    def finished(self, name: str) -> bool:
        """Whether the run is done with its config as it is now."""
        return self.lifecycle(name).finished()

    def train(self, names: list, jobs: int) -> None:
        """Train the runs, `jobs` processes at a time, each recording its outcome."""
        threads = max(1, (os.cpu_count() or 1) // jobs)
        pending, running = [self.lifecycle(name, threads) for name in names], []
        try:
            self._train(pending, running, jobs)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the runs stop too
            for _, process, _ in running:
                process.terminate()
            for _, process, _ in running:
                process.wait()
            raise

    def _train(self, pending: list, running: list, jobs: int) -> None:
        while pending or running:
            while pending and len(running) < jobs:
                run = pending.pop(0)
                log.info("training run %s", run.name)
                running.append((run, run.start(), time.monotonic()))
            time.sleep(0.2)
            for entry in list(running):
                run, process, started = entry
                if process.poll() is None:
                    continue
                running.remove(entry)
                status = run.finish(process.returncode, time.monotonic() - started)
                if status == "failed":  # bad settings: the run's error says which
                    error = read_json(run.status).get("error", f"exit {process.returncode}")
                    log.warning("run %s failed: %s; see %s", run.name, error, run.log)
                elif status is None:
                    log.warning(
                        "run %s stopped without an outcome (exit %d: a crash or a kill); the next search "
                        "trains it again; see %s", run.name, process.returncode, run.log,
                    )  # fmt: skip

    def metrics_paths(self) -> dict:
        """{run: metrics CSV} of the finished runs."""
        return {
            name: metrics_file(Path(resolved["project_root"]) / resolved["logs_path"], name)
            for name, resolved in self.configs.items()
            if self.finished(name)
        }

    def results(self) -> list[dict]:
        """A leaderboard row per run: its outcome, and its figures when it is done."""
        found, metrics = [], self.metrics_paths()
        for name, resolved in self.configs.items():
            path = self.lifecycle(name).status
            status = read_json(path) if path.is_file() else None  # none: incomplete
            if name not in metrics and status is not None and status["status"] == "done":
                status = None  # done on other inputs: not finished
            models = Path(resolved["project_root"]) / resolved["models_path"]
            found.append(leaderboard.outcome_row(name, status, metrics.get(name), models))
        return found


def run(loaded: dict, source: str = "hyperparameter-search config", jobs: int = 1) -> list[dict]:
    """Expand, train what is not finished, rank; returns the leaderboard's rows."""
    found = Search(loaded, source)
    found.write_runs()
    todo = [name for name in found.configs if not found.finished(name)]
    log.info("search %s: %d runs, %d to train", loaded["search_name"], len(found.configs), len(todo))
    found.train(todo, jobs)
    rows = leaderboard.ranked(found.results(), space.points_table(found.points))
    leaderboard.write_leaderboard(found.folder / "leaderboard.csv", rows)
    leaderboard.plot_curves(
        found.folder / "curves.png", found.metrics_paths(), f"search {loaded['search_name']}"
    )
    best = rows[0] if rows and rows[0]["status"] == "done" else None
    if best:
        log.info("best run %s: validation loss %.5f", best["run"], best["best_validation_loss"])
    log.info("leaderboard: %s", found.folder / "leaderboard.csv")
    return rows
