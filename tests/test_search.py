"""Search spaces: expansion, stable run ids, validation; `sequifier hyperparameter-search` end to end."""

import csv
import os

import pytest
import yaml
from conftest import made_project, run_cli
from wandb_runs import find_runs, read_run

from sequifier.errors import ConfigError
from sequifier.search import space as search

SPACE = {"model_spec.dim_model": [16, 32, 64], "training_spec.learning_rate": [0.001, 0.003]}


def test_a_grid_has_every_combination_with_stable_readable_ids():
    points = search.expand(SPACE, "grid", None, 0, "test")
    assert len(points) == 6
    assert points[0] == {"model_spec.dim_model": 16, "training_spec.learning_rate": 0.001}
    ids = search.run_ids(points)
    assert list(ids)[:2] == ["dim_model-16_learning_rate-0.001", "dim_model-16_learning_rate-0.003"]
    assert list(search.run_ids(search.expand(SPACE, "grid", None, 99, "test"))) == list(ids)
    more = {**SPACE, "model_spec.dim_model": [16, 32, 64, 128]}
    grown = search.run_ids(search.expand(more, "grid", None, 0, "test"))
    assert set(ids) < set(grown) and len(grown) == 8  # adding a value keeps the other runs' ids


def test_sampling_is_reproducible_and_stays_in_its_ranges():
    space = {
        "training_spec.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
        "model_spec.num_layers": {"low": 1, "high": 4},
        "model_spec.activation_fn": ["gelu", "swiglu"],
    }
    first = search.expand(space, "sample", 20, 7, "test")
    assert first == search.expand(space, "sample", 20, 7, "test")
    assert first != search.expand(space, "sample", 20, 8, "test")
    rates = [p["training_spec.learning_rate"] for p in first]
    assert all(1e-4 <= r <= 1e-2 for r in rates) and min(rates) < 1e-3 < max(rates)  # log-uniform
    assert {p["model_spec.num_layers"] for p in first} <= {1, 2, 3, 4}
    assert all(isinstance(p["model_spec.num_layers"], int) for p in first)
    assert {p["model_spec.activation_fn"] for p in first} == {"gelu", "swiglu"}


@pytest.mark.parametrize(
    "space, strategy, expected",
    [
        (
            {"model_spec.dim_modle": [8]},
            "grid",
            "model_spec.dim_modle: unknown key (did you mean 'dim_model'?)",
        ),
        (
            {"training_spec.learning_rate": ["fast"]},
            "grid",
            "training_spec.learning_rate: 'fast' is not valid",
        ),
        ({"model_spec.activation_fn": ["tanh"]}, "grid", "model_spec.activation_fn: 'tanh' is not valid"),
        ({"seq_length": {"low": 4, "high": 8}}, "grid", "space.seq_length: a range"),
        ({"seq_length": [4]}, "sample", "n_samples: null, but strategy sample needs a number of points"),
    ],
)
def test_an_invalid_space_is_an_error_naming_the_key(space, strategy, expected):
    with pytest.raises(ConfigError) as raised:
        ids = search.run_ids(search.expand(space, strategy, None, 0, "search.yaml"))
        search.run_configs(ids, {}, "search.yaml", lambda name, point: {})
    assert expected in str(raised.value) and "search.yaml" in str(raised.value)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """The make project with a one-epoch train config, searched over 2 x 2 points, 2 jobs at a time,
    W&B offline; one point (3 heads for dim 32) cannot train."""
    root = tmp_path_factory.mktemp("search")
    project = made_project(root)
    train = yaml.safe_load((project / "configs/train.yaml").read_text())
    train["training_spec"]["epochs"] = 1
    train["wandb"]["mode"] = "offline"
    (project / "configs/train.yaml").write_text(yaml.safe_dump(train))
    path = project / "configs/hyperparameter-search.yaml"
    config = yaml.safe_load(path.read_text())
    config["space"] = {"model_spec.dim_model": [24, 32], "model_spec.n_head": [4, 3]}  # 32 / 3 fails
    path.write_text(yaml.safe_dump(config))
    result = run_cli("hyperparameter-search", "--jobs", "2", cwd=project, env=wandb_home(root))
    assert result.returncode == 0, result.stderr
    return project, result


def wandb_home(root) -> dict:
    return {**os.environ, "HOME": str(root), "WANDB_CONFIG_DIR": str(root / ".wandb")}


def leaderboard_rows(project):
    with open(project / "outputs/hyperparameter-search/example/leaderboard.csv") as handle:
        return list(csv.DictReader(handle))


def test_the_leaderboard_ranks_the_runs_by_their_metrics(searched):
    project, _ = searched
    rows = leaderboard_rows(project)
    assert [row["run"] for row in rows if row["status"] == "failed"] == ["dim_model-32_n_head-3"]
    done = [row for row in rows if row["status"] == "done"]
    assert [row["rank"] for row in done] == ["1", "2", "3"]
    losses = [float(row["best_validation_loss"]) for row in done]
    assert losses == sorted(losses)
    assert list(rows[0])[3:5] == ["best_validation_loss", "baseline_loss"]  # side by side
    for row in done:
        with open(project / f"logs/sequifier-{row['run']}-metrics.csv") as handle:
            found = list(csv.DictReader(handle))
        metrics = [m for m in found if m["kind"] == "epoch" and m["epoch"] != "0"]  # trained epochs
        (baseline,) = [m for m in found if m["kind"] == "baseline_best"]
        best = min(metrics, key=lambda m: float(m["validation_loss"]))
        assert float(row["best_validation_loss"]) == float(best["validation_loss"])
        assert float(row["best_validation_loss_itemId"]) == float(best["validation_loss_itemId"])
        assert float(row["best_validation_accuracy_itemId"]) == float(best["validation_accuracy_itemId"])
        assert float(row["baseline_loss"]) == float(baseline["validation_loss"])
        assert float(row["baseline_loss_itemId"]) == float(baseline["validation_loss_itemId"])
        assert float(row["baseline_accuracy_itemId"]) == float(baseline["validation_accuracy_itemId"])
        assert row["model_spec.dim_model"] in row["run"] and int(row["parameters"]) > 1000
    small, large = (int(r["parameters"]) for r in sorted(done, key=lambda r: r["run"])[::2])
    assert small < large
    with open(project / "outputs/hyperparameter-search/example/runs.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 4


def test_runs_are_grouped_named_and_tagged_in_wandb(searched):
    project, _ = searched
    runs = [read_run(folder) for folder in find_runs(project / "logs")]
    names = sorted(run["name"] for run in runs)
    assert names == ["dim_model-24_n_head-3", "dim_model-24_n_head-4", "dim_model-32_n_head-4"]
    assert {run["group"] for run in runs} == {"example"}
    assert {run["job_type"] for run in runs} == {"train"}  # told apart from other jobs of the group
    tagged = {run["name"]: sorted(run["tags"]) for run in runs}
    assert tagged["dim_model-24_n_head-3"] == ["dim_model=24", "n_head=3"]


def test_a_second_search_trains_only_what_is_new_or_failed(searched):
    project, _ = searched
    path = project / "configs/hyperparameter-search.yaml"
    config = yaml.safe_load(path.read_text())
    config["space"]["model_spec.n_head"] = [4]
    config["space"]["model_spec.dim_model"] = [24, 32, 48]
    path.write_text(yaml.safe_dump(config))
    result = run_cli("hyperparameter-search", cwd=project, env=wandb_home(project.parent))
    assert result.returncode == 0, result.stderr
    assert "search example: 3 runs, 1 to train" in result.stderr
    assert "training run dim_model-48_n_head-4" in result.stderr
    assert [row["status"] for row in leaderboard_rows(project)] == ["done"] * 3


def test_a_run_without_a_finite_loss_is_ranked_after_the_finished_ones(tmp_path):
    from sequifier.search import leaderboard

    header = "epoch,batch,kind,train_loss,validation_loss,validation_loss_x,elapsed_s\n"
    untrained = "0,0,epoch,nan,1.0,1.0,0.1\n"  # better than any trained epoch: never the best epoch
    (tmp_path / "good.csv").write_text(
        header + untrained + "1,0,epoch,2.0,1.5,1.5,3.0\n2,0,epoch,1.0,1.2,1.2,6.0\n"
    )
    (tmp_path / "nan.csv").write_text(header + untrained + "1,0,epoch,nan,nan,nan,3.0\n")
    results = [
        leaderboard.run_result("nan", tmp_path / "nan.csv", tmp_path),
        leaderboard.run_result("good", tmp_path / "good.csv", tmp_path),
        leaderboard.run_result("gone", tmp_path / "missing.csv", tmp_path),
        leaderboard.outcome_row("killed", None, tmp_path / "killed.csv", tmp_path),  # no outcome: crashed
    ]
    names = ("nan", "good", "gone", "killed")
    rows = leaderboard.ranked(results, [{"run": name, "lr": "0.1"} for name in names])
    assert [(r["run"], r["status"], r["rank"]) for r in rows] == [
        ("good", "done", 1),
        ("nan", "diverged", ""),
        ("gone", "failed", ""),
        ("killed", "incomplete", ""),
    ]
    assert rows[0]["best_validation_loss"] == 1.2 and rows[0]["best_epoch"] == 2
