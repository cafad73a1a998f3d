"""AdEMAMix and the optimizer / scheduler builders of sequifier.optim."""

import io
import logging
import math
import warnings
from importlib import resources

import pytest
import torch
import yaml

from sequifier.errors import ConfigError
from sequifier.model import ModelArgs, Transformer
from sequifier.ademamix import AdEMAMix, _beta3_at
from sequifier.optim import build_optimizer, parameter_groups
from sequifier.schedules import RunLength, build_schedule


def regression_data(seed=0, n=64, d=4):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    w = torch.randn(d, 1, generator=generator, dtype=torch.float64)
    return x, x @ w + 0.5


def linear_model(seed=0, d=4):
    torch.manual_seed(seed)
    return torch.nn.Linear(d, 1).double()


def train(model, optimizer, x, y, steps):
    trajectory = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        trajectory.append([p.detach().clone() for p in model.parameters()])
    return loss.item(), trajectory


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=0.05, betas=(0.9, 0.999, 0.999), alpha=2.0),
        dict(lr=0.05, betas=(0.9, 0.999, 0.999), alpha=5.0, t_alpha_beta3=100, weight_decay=1e-4),
    ],
)
def test_ademamix_fits_linear_regression(kwargs):
    x, y = regression_data()
    model = linear_model()
    initial = torch.nn.functional.mse_loss(model(x), y).item()
    loss, _ = train(model, AdEMAMix(model.parameters(), **kwargs), x, y, steps=1000)
    assert loss < 1e-4 * initial


def test_ademamix_minimizes_quadratic():
    target = torch.tensor([3.0, -2.0, 0.5])
    p = torch.nn.Parameter(torch.zeros(3))
    optimizer = AdEMAMix([p], lr=0.1, betas=(0.9, 0.999, 0.99), alpha=1.0)
    for _ in range(500):
        optimizer.zero_grad()
        ((p - target) ** 2).sum().backward()
        optimizer.step()
    assert torch.allclose(p.detach(), target, atol=1e-2)


@pytest.mark.parametrize("t_alpha_beta3", [None, 1000])
def test_ademamix_with_alpha_zero_is_adamw(t_alpha_beta3):
    x, y = regression_data(seed=1)
    settings = dict(lr=0.01, eps=1e-8, weight_decay=0.1)
    model_a, model_b = linear_model(seed=1), linear_model(seed=1)
    ademamix = AdEMAMix(
        model_a.parameters(), betas=(0.8, 0.99, 0.5), alpha=0.0, t_alpha_beta3=t_alpha_beta3, **settings
    )
    adamw = torch.optim.AdamW(model_b.parameters(), betas=(0.8, 0.99), **settings)
    _, trajectory_a = train(model_a, ademamix, x, y, steps=20)
    _, trajectory_b = train(model_b, adamw, x, y, steps=20)
    for step_a, step_b in zip(trajectory_a, trajectory_b):
        for a, b in zip(step_a, step_b):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert not torch.equal(trajectory_a[0][0], trajectory_a[-1][0])


def test_alpha_warmup_makes_the_first_step_adamw():
    x, y = regression_data(seed=2)
    model_a, model_b = linear_model(seed=2), linear_model(seed=2)
    _, trajectory_a = train(model_a, AdEMAMix(model_a.parameters(), alpha=8.0, t_alpha_beta3=10), x, y, 1)
    _, trajectory_b = train(model_b, torch.optim.AdamW(model_b.parameters(), weight_decay=0.0), x, y, 1)
    for a, b in zip(trajectory_a[0], trajectory_b[0]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_beta3_warmup_goes_from_beta1_to_beta3():
    values = [_beta3_at(step, 0.9, 0.9999, 100) for step in range(0, 120, 10)]
    assert values[0] == pytest.approx(0.9)
    assert values[10:] == [0.9999, 0.9999]
    assert all(a < b for a, b in zip(values, values[1:10]))
    # Linear in the half-life (up to the 1e-8 that guards log(0)): half-way, it is the mean of both ends.
    half_life = [math.log(0.5) / math.log(b) for b in (0.9, _beta3_at(50, 0.9, 0.9999, 100), 0.9999)]
    assert half_life[1] == pytest.approx((half_life[0] + half_life[2]) / 2, rel=1e-3)


def test_ademamix_state_dict_round_trip():
    x, y = regression_data(seed=3)
    model = linear_model(seed=3)
    optimizer = AdEMAMix(model.parameters(), lr=0.01, alpha=3.0, t_alpha_beta3=50, weight_decay=0.01)
    train(model, optimizer, x, y, steps=5)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    clone = linear_model(seed=99)
    clone.load_state_dict(saved["model"])
    clone_optimizer = AdEMAMix(clone.parameters(), lr=0.01, alpha=3.0, t_alpha_beta3=50, weight_decay=0.01)
    clone_optimizer.load_state_dict(saved["optimizer"])
    assert clone_optimizer.state_dict()["state"][0]["step"] == 5

    _, expected = train(model, optimizer, x, y, steps=3)
    _, actual = train(clone, clone_optimizer, x, y, steps=3)
    for step_a, step_b in zip(expected, actual):
        for a, b in zip(step_a, step_b):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=-1.0),
        dict(betas=(0.9, 0.999)),
        dict(betas=(0.9, 1.0, 0.999)),
        dict(alpha=-0.5),
        dict(t_alpha_beta3=0),
        dict(eps=-1e-8),
        dict(weight_decay=-0.1),
    ],
)
def test_ademamix_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        AdEMAMix([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def parameters():
    return linear_model().parameters()


def test_build_optimizer_adam_with_list_betas():
    optimizer = build_optimizer(parameters(), {"name": "Adam", "betas": [0.8, 0.95], "eps": 1e-6}, 3e-4)
    assert type(optimizer) is torch.optim.Adam
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (3e-4, (0.8, 0.95), 1e-6)


def test_build_optimizer_sgd_and_ademamix():
    sgd = build_optimizer(parameters(), {"name": "SGD", "momentum": 0.9, "nesterov": True}, 0.1)
    assert type(sgd) is torch.optim.SGD
    assert (sgd.param_groups[0]["lr"], sgd.param_groups[0]["momentum"]) == (0.1, 0.9)
    spec = {"name": "AdEMAMix", "betas": [0.9, 0.99, 0.999], "alpha": 4.0, "t_alpha_beta3": 1000}
    ademamix = build_optimizer(parameters(), spec, 1e-3)
    assert type(ademamix) is AdEMAMix
    group = ademamix.param_groups[0]
    assert (group["betas"], group["alpha"], group["t_alpha_beta3"]) == ((0.9, 0.99, 0.999), 4.0, 1000)
    assert spec["name"] == "AdEMAMix"  # the config block is not mutated


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"name": "AdamX"}, ["training_spec.optimizer.name", "'AdamX'", "did you mean", "'Adam'"]),
        ({"name": "AdamW", "wd": 0.1}, ["AdamW does not accept 'wd'", "weight_decay"]),
        ({"name": "AdamW", "lr": 0.1}, ["training_spec.optimizer.lr", "training_spec.learning_rate"]),
        ({"weight_decay": 0.1}, ["training_spec.optimizer.name", "missing", "AdEMAMix"]),
        ({"name": "AdamW", "weight_decay": -1}, ["training_spec.optimizer", "AdamW", "weight_decay"]),
        ({"name": "AdEMAMix", "betas": [0.9, 0.99]}, ["training_spec.optimizer", "AdEMAMix", "betas"]),
        ({"name": "Adam", "betas": "fast"}, ["training_spec.optimizer", "Adam", "'fast'"]),
        ({"name": ["Adam"]}, ["training_spec.optimizer.name", "unknown optimizer ['Adam']"]),
        ("AdamW", ["training_spec.optimizer", "mapping"]),
    ],
)
def test_build_optimizer_errors(spec, expected):
    with pytest.raises(ConfigError) as error:
        build_optimizer(parameters(), spec, 1e-3)
    message = str(error.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


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
    with caplog.at_level(logging.WARNING, logger="sequifier.schedules"):
        schedule = build_schedule(optimizer_with_lr(), spec, "epoch", RunLength(20, 3))
    assert [r.name for r in caplog.records] == ["sequifier.schedules"]
    assert expected in caplog.text
    run_lrs(schedule, 20, 3)  # the run goes on as the warning says


def test_the_warning_counts_in_optimizer_steps_with_step_on_batch(caplog):
    spec = {"name": "CosineAnnealingLR", "T_max": 50, "eta_min": 0.01}
    with caplog.at_level(logging.WARNING, logger="sequifier.schedules"):
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
    with caplog.at_level(logging.WARNING, logger="sequifier.schedules"):
        build_schedule(optimizer_with_lr(), spec, "epoch", run)
    assert caplog.records == []


def test_a_warmup_longer_than_the_run_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="sequifier.schedules"):
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
    with caplog.at_level(logging.INFO, logger="sequifier.schedules"):
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
    with caplog.at_level(logging.INFO, logger="sequifier.schedules"):
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


def transformer(normalization):
    columns = (("item", "categorical", 9, 12), ("price", "real", 0, 4))
    targets = (("item", "categorical", 9), ("price", "real", 0))
    args = ModelArgs(
        columns, targets, seq_length=8, dim_model=16, n_head=4, n_kv_heads=2, dim_feedforward=24,
        normalization=normalization,
    )  # fmt: skip
    torch.manual_seed(0)
    return Transformer(args)


@pytest.mark.parametrize("normalization", ["layer_norm", "rmsnorm"])
def test_parameter_groups_of_a_transformer(normalization):
    model = transformer(normalization)
    decay, no_decay = parameter_groups(model)
    assert "weight_decay" not in decay and no_decay["weight_decay"] == 0.0
    decay_ids, no_decay_ids = {id(p) for p in decay["params"]}, {id(p) for p in no_decay["params"]}
    norms = linears = embeddings = 0
    for module in model.modules():
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)):
            norms += 1
            assert all(id(p) in no_decay_ids for p in module.parameters())
        elif isinstance(module, torch.nn.Linear):
            linears += 1
            assert id(module.weight) in decay_ids and id(module.bias) in no_decay_ids
        elif isinstance(module, torch.nn.Embedding):
            embeddings += 1
            assert id(module.weight) in decay_ids
    assert (norms, embeddings) == (2 * 2 + 1, 2) and linears >= 8
    assert not decay_ids & no_decay_ids
    assert decay_ids | no_decay_ids == {id(p) for p in model.parameters()}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_parameter_groups_leave_out_frozen_parameters():
    model = transformer("layer_norm")
    model.final_norm.weight.requires_grad_(False)
    model.positions.weight.requires_grad_(False)
    optimizer = build_optimizer(model, {"name": "AdamW"}, 1e-3)
    ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(model.final_norm.weight) not in ids and id(model.positions.weight) not in ids
    assert len(ids) == len(list(model.parameters())) - 2
    named = build_optimizer(model.named_parameters(), {"name": "AdamW"}, 1e-3)
    assert [len(g["params"]) for g in named.param_groups] == [
        len(g["params"]) for g in optimizer.param_groups
    ]


@pytest.mark.parametrize("name", ["AdamW", "AdEMAMix"])
def test_weight_decay_shrinks_weight_matrices_but_not_norms(name):
    model = transformer("layer_norm")
    optimizer = build_optimizer(model, {"name": name, "weight_decay": 0.1}, 0.1)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    norm, linear, bias = (
        model.final_norm.weight,
        model.blocks[0].attention.query.weight,
        model.heads["item"].bias,
    )
    with torch.no_grad():
        norm.mul_(2.0)
        bias.fill_(0.5)
    before = [p.detach().clone() for p in (norm, linear, bias)]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the decay moves a parameter
    optimizer.step()
    assert torch.equal(norm, before[0]) and torch.equal(bias, before[2])
    torch.testing.assert_close(linear.detach(), before[1] * (1 - 0.1 * 0.1), rtol=1e-6, atol=0)


def test_optimizer_without_weight_decay_has_one_group():
    model = transformer("layer_norm")
    optimizer = build_optimizer(model, {"name": "Rprop"}, 1e-3)
    assert len(optimizer.param_groups) == 1
    assert len(optimizer.param_groups[0]["params"]) == len(list(model.parameters()))
