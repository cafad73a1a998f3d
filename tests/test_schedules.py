"""Learning-rate schedules: horizons that follow the run, warm-up in optimizer steps, exact resume."""

import io
import logging
import math
import warnings
from importlib import resources

import pytest
import torch
import yaml

from sequifier.errors import ConfigError
from sequifier.train.optim import build_optimizer
from sequifier.train.schedules import RunLength, build_schedule


def linear_model(seed=0, d=4):
    torch.manual_seed(seed)
    return torch.nn.Linear(d, 1).double()


def optimizer_with_lr(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def run_lrs(schedule, epochs, steps_per_epoch):
    """The learning rate of every optimizer step of `epochs` epochs, as the trainer steps the schedule."""
    values = []
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            values.append(schedule.optimizer.param_groups[0]["lr"])
            schedule.optimizer.step()
            schedule.after_step()
        schedule.after_epoch()
    return values


def cosine(lr, t, period, eta_min=0.0):
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * t / period)) / 2


def template_scheduler():
    text = (resources.files("sequifier") / "templates" / "train.yaml").read_text()
    spec = yaml.safe_load(text)["training_spec"]["scheduler"]
    assert spec["name"] == "CosineAnnealingLR" and "T_max" not in spec
    return spec


def test_build_schedule_none_and_step_lr():
    assert build_schedule(optimizer_with_lr(), None, "epoch", RunLength(5, 3)) is None
    spec = {"name": "StepLR", "step_size": 1, "gamma": 0.5}
    schedule = build_schedule(optimizer_with_lr(), spec, "batch", RunLength(2, 2))
    assert run_lrs(schedule, 2, 2) == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    schedule = build_schedule(optimizer_with_lr(), spec, "epoch", RunLength(3, 2))
    assert run_lrs(schedule, 3, 2) == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_template_cosine_spans_a_run_of_twenty_epochs():
    schedule = build_schedule(optimizer_with_lr(0.003), template_scheduler(), "epoch", RunLength(20, 3))
    assert schedule.main.T_max == 20
    values = run_lrs(schedule, 20, 3)
    per_epoch = values[::3]
    assert values == pytest.approx([v for v in per_epoch for _ in range(3)], abs=0)
    assert per_epoch == pytest.approx([cosine(0.003, k, 20) for k in range(20)], rel=1e-9)
    assert all(a >= b for a, b in zip(per_epoch, per_epoch[1:]))
    assert per_epoch[0] == 0.003 and per_epoch[-1] > 0.0  # eta_min 0 comes after the last epoch


def test_template_cosine_stepped_per_batch_spans_the_optimizer_steps():
    schedule = build_schedule(optimizer_with_lr(0.003), template_scheduler(), "batch", RunLength(20, 7))
    assert schedule.main.T_max == 140
    values = run_lrs(schedule, 20, 7)
    assert values == pytest.approx([cosine(0.003, s, 140) for s in range(140)], rel=1e-9)
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[-1] > 0.0


@pytest.mark.parametrize(
    "spec, expected",
    [
        (
            {"name": "CosineAnnealingLR", "T_max": 5},
            "training_spec.scheduler.T_max: 5 epochs is shorter than the run (20 epochs): "
            "CosineAnnealingLR's learning rate reaches eta_min after epoch 5 and rises again "
            "(a cosine of period 10)",
        ),
        (
            {"name": "LinearLR", "start_factor": 1.0, "end_factor": 0.1, "total_iters": 4},
            "training_spec.scheduler.total_iters: 4 epochs is shorter than the run (20 epochs): LinearLR's "
            "learning rate reaches end_factor × learning_rate after epoch 4 and stays there",
        ),
        (
            {"name": "PolynomialLR", "total_iters": 10, "power": 2.0},
            "training_spec.scheduler.total_iters: 10 epochs is shorter than the run (20 epochs): "
            "PolynomialLR's learning rate reaches 0 after epoch 10 and stays there",
        ),
    ],
)
def test_a_horizon_shorter_than_the_run_warns(caplog, spec, expected):
    with caplog.at_level(logging.WARNING, logger="sequifier.train.schedules"):
        schedule = build_schedule(optimizer_with_lr(), spec, "epoch", RunLength(20, 3))
    assert [r.name for r in caplog.records] == ["sequifier.train.schedules"]
    assert expected in caplog.text
    run_lrs(schedule, 20, 3)  # the run goes on as the warning says


def test_the_warning_counts_in_optimizer_steps_with_step_on_batch(caplog):
    spec = {"name": "CosineAnnealingLR", "T_max": 50, "eta_min": 0.01}
    with caplog.at_level(logging.WARNING, logger="sequifier.train.schedules"):
        schedule = build_schedule(optimizer_with_lr(), spec, "batch", RunLength(20, 5))
    assert "T_max: 50 optimizer steps is shorter than the run (100 optimizer steps)" in caplog.text
    assert "after optimizer step 50 and rises again (a cosine of period 100)" in caplog.text
    values = run_lrs(schedule, 20, 5)
    assert values[50] == pytest.approx(0.01) and values[99] == pytest.approx(cosine(0.1, 99, 50, 0.01))


@pytest.mark.parametrize(
    "spec, run",
    [
        ({"name": "CosineAnnealingLR"}, RunLength(20, 3)),
        ({"name": "CosineAnnealingLR", "T_max": 20}, RunLength(20, 3)),
        ({"name": "CosineAnnealingLR", "T_max": 30}, RunLength(20, 3)),
        ({"name": "LinearLR", "start_factor": 1.0, "end_factor": 0.1}, RunLength(20, 3)),
        ({"name": "StepLR", "step_size": 2}, RunLength(20, 3)),
        ({"name": "LinearWarmup", "warmup_steps": 60}, RunLength(20, 3)),
    ],
)
def test_no_warning_when_the_schedule_spans_the_run(caplog, spec, run):
    with caplog.at_level(logging.WARNING, logger="sequifier.train.schedules"):
        build_schedule(optimizer_with_lr(), spec, "epoch", run)
    assert caplog.records == []


def test_a_warmup_longer_than_the_run_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="sequifier.train.schedules"):
        build_schedule(optimizer_with_lr(), {"warmup_steps": 40}, "epoch", RunLength(2, 5))
    assert "warmup_steps: 40 optimizer steps is longer than the run (10 optimizer steps)" in caplog.text


def test_linear_lr_and_polynomial_lr_default_to_the_run():
    spec = {"name": "LinearLR", "start_factor": 1.0, "end_factor": 0.0}
    values = run_lrs(build_schedule(optimizer_with_lr(), spec, "epoch", RunLength(4, 1)), 4, 1)
    assert values == pytest.approx([0.1, 0.075, 0.05, 0.025])
    spec = {"name": "PolynomialLR", "power": 1.0}
    values = run_lrs(build_schedule(optimizer_with_lr(), spec, "batch", RunLength(2, 2)), 2, 2)
    assert values == pytest.approx([0.1, 0.075, 0.05, 0.025])


def test_warmup_counts_optimizer_steps_with_step_on_epoch():
    spec = {"name": "CosineAnnealingLR", "warmup_steps": 4}
    values = run_lrs(build_schedule(optimizer_with_lr(), spec, "epoch", RunLength(3, 6)), 3, 6)
    epoch_cosine = [cosine(0.1, k, 3) for k in range(3)]
    # Epoch 1: the first four optimizer steps ramp up to the epoch's cosine value, then it holds.
    assert values[:6] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    assert values[6:] == pytest.approx([epoch_cosine[1]] * 6 + [epoch_cosine[2]] * 6)


def test_warmup_spanning_epochs_multiplies_the_epoch_schedule():
    spec = {"name": "StepLR", "step_size": 1, "gamma": 0.5, "warmup_steps": 4}
    values = run_lrs(build_schedule(optimizer_with_lr(), spec, "epoch", RunLength(3, 2)), 3, 2)
    assert values == pytest.approx([0.025, 0.05, 0.05 * 0.75, 0.05, 0.025, 0.025])


def test_warmup_times_cosine_per_batch():
    # CosineAnnealingLR steps in its recursive form, from its own lr: the warm-up does not disturb it.
    spec = {"name": "CosineAnnealingLR", "T_max": 10, "warmup_steps": 3, "eta_min": 0.0}
    values = run_lrs(build_schedule(optimizer_with_lr(), spec, "batch", RunLength(2, 5)), 2, 5)
    expected = [cosine(0.1, s, 10) * min(1.0, (s + 1) / 3) for s in range(10)]
    assert values == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("spec", [{"name": "LinearWarmup", "warmup_steps": 3}, {"warmup_steps": 3}])
def test_linear_warmup_alone(spec):
    schedule = build_schedule(optimizer_with_lr(0.3), spec, "epoch", RunLength(2, 3))
    assert schedule.main is None
    assert run_lrs(schedule, 2, 3) == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3, 0.3])


def test_zero_warmup_is_constant_or_the_main_scheduler():
    schedule = build_schedule(optimizer_with_lr(), {"warmup_steps": 0}, "batch", RunLength(1, 3))
    assert run_lrs(schedule, 1, 3) == pytest.approx([0.1] * 3)
    spec = {"name": "ExponentialLR", "gamma": 0.5, "warmup_steps": 0}
    schedule = build_schedule(optimizer_with_lr(), spec, "batch", RunLength(1, 3))
    assert type(schedule.main) is torch.optim.lr_scheduler.ExponentialLR
    assert run_lrs(schedule, 1, 3) == pytest.approx([0.1, 0.05, 0.025])


def adamw(weight_decay=0.01):
    return build_optimizer(linear_model(), {"name": "AdamW", "weight_decay": weight_decay}, 0.01)


@pytest.mark.parametrize("step_on", ["epoch", "batch"])
def test_one_cycle_without_total_steps_spans_the_run(step_on):
    optimizer = adamw()
    assert len(optimizer.param_groups) == 2  # a weight matrix and a bias
    schedule = build_schedule(optimizer, {"name": "OneCycleLR"}, step_on, RunLength(6, 5))
    length = 6 if step_on == "epoch" else 30
    assert schedule.main.total_steps == length
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a warning
        values = run_lrs(schedule, 6, 5)
    steps = values[::5] if step_on == "epoch" else values
    peak = steps.index(max(steps))
    assert max(steps) == pytest.approx(0.01, rel=0.05)  # max_lr defaults to the learning rate
    assert peak == round(0.3 * length - 1) or peak == round(0.3 * length)
    assert steps[0] == pytest.approx(0.01 / 25) and steps[-1] < steps[0]
    assert optimizer.param_groups[0]["lr"] == optimizer.param_groups[1]["lr"]


@pytest.mark.parametrize(
    "spec, step_on, expected",
    [
        (
            {"name": "OneCycleLR", "total_steps": 50},
            "batch",
            [
                "training_spec.scheduler.total_steps: 50 optimizer steps is shorter than the run "
                "(60 optimizer steps)",
                "OneCycleLR would stop the training with an error after optimizer step 51",
                "set total_steps to at least 60",
            ],
        ),
        (
            {"name": "OneCycleLR", "max_lr": 0.1, "epochs": 4, "steps_per_epoch": 10},
            "batch",
            ["epochs × steps_per_epoch: 4 × 10 = 40 optimizer steps is shorter", "after optimizer step 41"],
        ),
        (
            {"name": "OneCycleLR", "total_steps": 5},
            "epoch",
            ["total_steps: 5 epochs is shorter than the run (6 epochs)", "after epoch 6", "at least 6"],
        ),
    ],
)
def test_one_cycle_shorter_than_the_run_is_a_config_error(spec, step_on, expected):
    with pytest.raises(ConfigError) as error:
        build_schedule(adamw(), spec, step_on, RunLength(6, 10))
    message = str(error.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_one_cycle_as_long_as_the_run_never_raises():
    spec = {"name": "OneCycleLR", "total_steps": 12, "three_phase": True}
    schedule = build_schedule(adamw(), spec, "batch", RunLength(3, 4))
    assert len(run_lrs(schedule, 3, 4)) == 12


def round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # as a checkpoint is read


def model_and_schedule(spec, step_on, run):
    model = linear_model()
    optimizer = build_optimizer(model, {"name": "AdamW", "weight_decay": 0.1}, 0.01)
    return optimizer, build_schedule(optimizer, spec, step_on, run)


def trained_lrs(optimizer, schedule, epochs, steps_per_epoch, start=0):
    """The learning rates of each step (of every group), from step `start` of the first epoch on."""
    values = []
    for epoch in range(epochs):
        for _ in range(start if epoch == 0 else 0, steps_per_epoch):
            values.extend(g["lr"] for g in optimizer.param_groups)
            optimizer.step()
            schedule.after_step()
        schedule.after_epoch()
    return values


RESUMED = [
    ({"name": "CosineAnnealingLR", "warmup_steps": 7}, "batch"),
    ({"name": "CosineAnnealingLR", "warmup_steps": 7, "eta_min": 0.001}, "epoch"),
    ({"name": "OneCycleLR", "warmup_steps": 2}, "batch"),
    ({"name": "StepLR", "step_size": 2, "gamma": 0.5, "warmup_steps": 3}, "epoch"),
    ({"name": "LinearWarmup", "warmup_steps": 9}, "batch"),
]


@pytest.mark.parametrize("spec, step_on", RESUMED)
@pytest.mark.parametrize("stop", [(2, 0), (2, 3)])  # (epochs done, steps done of the next epoch)
def test_resume_gives_the_learning_rates_of_an_uninterrupted_run(spec, step_on, stop):
    run = RunLength(5, 4)
    optimizer, schedule = model_and_schedule(spec, step_on, run)
    expected = trained_lrs(optimizer, schedule, 5, 4)

    optimizer, schedule = model_and_schedule(spec, step_on, run)
    epochs, steps = stop
    before = trained_lrs(optimizer, schedule, epochs, 4)
    for _ in range(steps):
        before.extend(g["lr"] for g in optimizer.param_groups)
        optimizer.step()
        schedule.after_step()
    saved = round_trip({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()})

    optimizer, schedule = model_and_schedule(spec, step_on, run)
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    after = trained_lrs(optimizer, schedule, run.epochs - epochs, 4, start=steps)
    assert before + after == expected  # exactly


FOLLOWED = [
    ({"name": "CosineAnnealingLR", "warmup_steps": 3}, "epoch", "T_max"),
    ({"name": "CosineAnnealingLR", "eta_min": 0.001}, "batch", "T_max"),
    ({"name": "OneCycleLR"}, "batch", "total_steps"),
    ({"name": "LinearLR", "start_factor": 1.0, "end_factor": 0.1}, "epoch", "total_iters"),
    ({"name": "PolynomialLR", "power": 2.0}, "batch", "total_iters"),
]


@pytest.mark.parametrize("spec, step_on, key", FOLLOWED)
@pytest.mark.parametrize("stop", [(4, 0), (2, 1)])  # the whole 4-epoch run, or within its third epoch
def test_a_defaulted_horizon_follows_a_longer_run_on_resume(caplog, spec, step_on, key, stop):
    optimizer, schedule = model_and_schedule(spec, step_on, RunLength(10, 4))
    expected = trained_lrs(optimizer, schedule, 10, 4)

    optimizer, schedule = model_and_schedule(spec, step_on, RunLength(4, 4))
    epochs, steps = stop
    trained_lrs(optimizer, schedule, epochs, 4)
    for _ in range(steps):
        optimizer.step()
        schedule.after_step()
    saved = round_trip({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()})

    optimizer, schedule = model_and_schedule(spec, step_on, RunLength(10, 4))
    optimizer.load_state_dict(saved["optimizer"])
    with caplog.at_level(logging.INFO, logger="sequifier.train.schedules"):
        schedule.load_state_dict(saved["schedule"])
    long, short = (
        ("10 epochs", "4 epochs") if step_on == "epoch" else ("40 optimizer steps", "16 optimizer steps")
    )
    name = spec["name"]
    assert (
        f"{name}'s {key} defaults to the run, which is now {long} (the checkpoint's: {short})" in caplog.text
    )
    assert getattr(schedule.main, key) == (10 if step_on == "epoch" else 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        after = trained_lrs(optimizer, schedule, 10 - epochs, 4, start=steps)
    assert after == pytest.approx(expected[2 * (4 * epochs + steps) :], rel=1e-9, abs=0)


def test_a_given_horizon_stays_on_resume(caplog):
    spec = {"name": "CosineAnnealingLR", "T_max": 4}
    optimizer, schedule = model_and_schedule(spec, "epoch", RunLength(4, 2))
    trained_lrs(optimizer, schedule, 4, 2)
    saved = round_trip(schedule.state_dict())
    optimizer, schedule = model_and_schedule(spec, "epoch", RunLength(8, 2))
    with caplog.at_level(logging.INFO, logger="sequifier.train.schedules"):
        schedule.load_state_dict(saved)
    assert "defaults to the run" not in caplog.text
    assert schedule.main.T_max == 4


def test_a_foreign_scheduler_state_is_a_config_error():
    schedule = build_schedule(optimizer_with_lr(), {"name": "CosineAnnealingLR"}, "epoch", RunLength(3, 1))
    old = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer_with_lr(), T_max=3).state_dict()
    with pytest.raises(ConfigError, match="training_spec.continue_training: false"):
        schedule.load_state_dict(old)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"name": "ReduceLROnPlateau"}, ["training_spec.scheduler.name", "ReduceLROnPlateau", "metric"]),
        ({"name": "LambdaLR", "lr_lambda": 0.5}, ["training_spec.scheduler.name", "LambdaLR"]),
        ({"name": "StepLr", "step_size": 1}, ["training_spec.scheduler.name", "'StepLr'", "'StepLR'"]),
        ({"name": "StepLR", "step": 1}, ["StepLR does not accept 'step'", "step_size"]),
        ({"name": "StepLR"}, ["training_spec.scheduler", "StepLR", "step_size"]),
        ({"name": "StepLR", "step_size": 0}, ["training_spec.scheduler", "fails when stepped"]),
        ({"name": "LinearWarmup", "warmup_steps": 2, "gamma": 0.5}, ["training_spec.scheduler", "'gamma'"]),
        ({"warmup_steps": -1}, ["training_spec.scheduler.warmup_steps", "-1"]),
        ({"warmup_steps": 2.5}, ["training_spec.scheduler.warmup_steps", "2.5", "integer >= 0"]),
        ({"warmup_steps": True}, ["training_spec.scheduler.warmup_steps", "True"]),
        ({"name": "LinearLR", "start_factor": 2.0}, ["training_spec.scheduler", "LinearLR", "start_factor"]),
        (["StepLR"], ["training_spec.scheduler", "mapping"]),
    ],
)
def test_build_schedule_errors(spec, expected):
    with pytest.raises(ConfigError) as error:
        build_schedule(optimizer_with_lr(), spec, "epoch", RunLength(5, 3))
    message = str(error.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_step_on_must_be_epoch_or_batch():
    with pytest.raises(ConfigError, match="training_spec.scheduler_step_on: 'step'"):
        build_schedule(optimizer_with_lr(), {"name": "CosineAnnealingLR"}, "step", RunLength(5, 3))


# -- weight decay --------------------------------------------------------------------------------------
