"""`sequifier hyperparameter-search`: a search trained run by run, then ranked.

In output_path/{search_name}/: runs.csv (run id -> its point), runs/{run}.yaml (the run's complete
train config), logs/{run}.log, leaderboard.csv and curves.png (validation loss per epoch). Every
run is `sequifier train` in a process of its own (`jobs` at a time), so a run that fails does not
stop the others; it is marked failed in the leaderboard and tried again by the next search. A run
whose config is unchanged since it finished is not trained again.
"""

import hashlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from sequifier import config as stage_config
from sequifier.files import atomic_path, read_json, write_json
from sequifier.search import leaderboard
from sequifier.search import space as search

log = logging.getLogger(__name__)


class Search:
    def __init__(self, loaded: dict, source: str):
        self.config, self.source = loaded, source
        self.root = Path(loaded["project_root"])
        self.folder = self.root / loaded["output_path"] / loaded["search_name"]
        train_path = self.root / loaded["train_config_path"]
        base = stage_config.read_yaml(train_path)
        base["project_root"] = str(self.root / base.get("project_root", "."))  # one project: the search's
        points = search.expand(
            loaded["space"], loaded["strategy"], loaded["n_samples"], loaded["seed"], source
        )
        self.points = search.run_ids(points)
        self.configs = search.run_configs(self.points, base, source, self.overrides)

    def overrides(self, name: str, point: dict) -> dict:
        """What a run sets besides its point: its name, and its W&B group, name and tags."""
        return {
            "model_name": name,
            "wandb.group": self.config["search_name"],
            "wandb.name": name,
            "wandb.tags": search.tags(point),
        }

    def config_path(self, name: str) -> Path:
        return self.folder / "runs" / f"{name}.yaml"

    def stamp_path(self, name: str) -> Path:
        return self.folder / "runs" / f"{name}.done"

    def write_runs(self) -> None:
        leaderboard.write_table(self.folder / "runs.csv", search.points_table(self.points))
        for name, resolved in self.configs.items():
            text = f"# Train config of run {name} of search {self.config['search_name']}.\n"
            text += yaml.safe_dump(resolved, sort_keys=False)
            path = self.config_path(name)
            if not path.is_file() or path.read_text() != text:
                with atomic_path(path) as tmp:
                    tmp.write_text(text)

    def digest(self, name: str) -> str:
        """Hash of the run's config file, kept in its stamp when it finishes."""
        return hashlib.blake2b(self.config_path(name).read_bytes(), digest_size=16).hexdigest()

    def finished(self, name: str) -> bool:
        stamp = self.stamp_path(name)
        return stamp.is_file() and read_json(stamp).get("config") == self.digest(name)

    def train(self, names: list, jobs: int) -> None:
        """Train the runs, `jobs` processes at a time; each writes a stamp when it succeeds."""
        threads = max(1, (os.cpu_count() or 1) // jobs)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        (self.folder / "logs").mkdir(parents=True, exist_ok=True)
        pending, running = list(names), {}
        while pending or running:
            while pending and len(running) < jobs:
                name = pending.pop(0)
                log.info("training run %s", name)
                command = [
                    sys.executable,
                    "-m",
                    "sequifier",
                    "train",
                    "--config-path",
                    str(self.config_path(name)),
                ]
                handle = open(self.folder / "logs" / f"{name}.log", "w")
                process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
                running[name] = (process, handle, time.monotonic())
            time.sleep(0.2)
            for name, (process, handle, started) in list(running.items()):
                if process.poll() is None:
                    continue
                handle.close()
                del running[name]
                self.stamp_path(name).unlink(missing_ok=True)
                if process.returncode == 0:
                    stamp = {"config": self.digest(name), "wall_s": time.monotonic() - started}
                    write_json(self.stamp_path(name), stamp)
                else:
                    log.warning("run %s failed (exit %d); see %s", name, process.returncode, handle.name)

    def metrics_paths(self) -> dict:
        """{run: metrics CSV} of the finished runs."""
        return {
            name: Path(resolved["project_root"]) / resolved["logs_path"] / f"sequifier-{name}-metrics.csv"
            for name, resolved in self.configs.items()
            if self.finished(name)
        }

    def results(self) -> list[dict]:
        found, metrics = [], self.metrics_paths()
        for name, resolved in self.configs.items():
            if name not in metrics:
                found.append({"run": name, "status": "failed"})
                continue
            models = Path(resolved["project_root"]) / resolved["models_path"]
            result = leaderboard.run_result(name, metrics[name], models)
            result["wall_s"] = round(read_json(self.stamp_path(name))["wall_s"], 1)  # the whole process
            found.append(result)
        return found


def run(loaded: dict, source: str = "hyperparameter-search config", jobs: int = 1) -> list[dict]:
    """Expand, train what is not finished, rank; returns the leaderboard's rows."""
    found = Search(loaded, source)
    found.write_runs()
    todo = [name for name in found.configs if not found.finished(name)]
    log.info("search %s: %d runs, %d to train", loaded["search_name"], len(found.configs), len(todo))
    found.train(todo, jobs)
    rows = leaderboard.ranked(found.results(), search.points_table(found.points))
    leaderboard.write_leaderboard(found.folder / "leaderboard.csv", rows)
    leaderboard.plot_curves(
        found.folder / "curves.png", found.metrics_paths(), f"search {loaded['search_name']}"
    )
    best = rows[0] if rows and rows[0]["status"] == "done" else None
    if best:
        log.info("best run %s: validation loss %.5f", best["run"], best["best_validation_loss"])
    log.info("leaderboard: %s", found.folder / "leaderboard.csv")
    return rows
