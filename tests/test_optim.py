"""AdEMAMix and the optimizer / scheduler builders of sequifier.optim."""

import copy
import io
import math

import pytest
import torch

from sequifier.errors import ConfigError
from sequifier.optim import AdEMAMix, _beta3_at, build_optimizer, build_scheduler


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


def lrs(scheduler, steps):
    """The learning rate before the first step and after each of `steps` steps."""
    values = [scheduler.get_last_lr()[0]]
    for _ in range(steps):
        scheduler.optimizer.step()
        scheduler.step()
        values.append(scheduler.get_last_lr()[0])
    return values


def test_build_scheduler_none_and_step_lr():
    assert build_scheduler(optimizer_with_lr(), None) is None
    scheduler = build_scheduler(optimizer_with_lr(), {"name": "StepLR", "step_size": 1, "gamma": 0.5})
    assert lrs(scheduler, 3) == pytest.approx([0.1, 0.05, 0.025, 0.0125])


def test_warmup_then_step_lr():
    spec = {"name": "StepLR", "step_size": 1, "gamma": 0.5, "warmup_steps": 4}
    scheduler = build_scheduler(optimizer_with_lr(), spec)
    # LinearLR: lr * (1/4 + (1 - 1/4) * k / 4) after k steps, then StepLR from the full lr.
    warmup = [0.1 * (0.25 + 0.75 * k / 4) for k in range(5)]
    assert warmup == pytest.approx([0.025, 0.04375, 0.0625, 0.08125, 0.1])
    assert lrs(scheduler, 7) == pytest.approx(warmup + [0.05, 0.025, 0.0125])
    assert scheduler.optimizer.param_groups[0]["lr"] == pytest.approx(0.0125)


def test_warmup_then_cosine():
    spec = {"name": "CosineAnnealingLR", "T_max": 10, "warmup_steps": 2, "eta_min": 0.0}
    values = lrs(build_scheduler(optimizer_with_lr(), spec), 12)
    cosine = [0.1 * (1 + math.cos(math.pi * t / 10)) / 2 for t in range(11)]
    assert values == pytest.approx([0.05, 0.075] + cosine, abs=1e-12)


@pytest.mark.parametrize("spec", [{"name": "LinearWarmup", "warmup_steps": 3}, {"warmup_steps": 3}])
def test_linear_warmup_alone(spec):
    values = lrs(build_scheduler(optimizer_with_lr(0.3), spec), 5)
    assert values == pytest.approx([0.1, 0.1 + 0.2 / 3, 0.1 + 0.4 / 3, 0.3, 0.3, 0.3])


def test_zero_warmup_is_constant_or_the_main_scheduler():
    assert lrs(build_scheduler(optimizer_with_lr(), {"warmup_steps": 0}), 2) == pytest.approx([0.1] * 3)
    spec = {"name": "ExponentialLR", "gamma": 0.5, "warmup_steps": 0}
    scheduler = build_scheduler(optimizer_with_lr(), spec)
    assert type(scheduler) is torch.optim.lr_scheduler.ExponentialLR


def test_warmup_scheduler_state_dict_round_trip():
    spec = {"name": "StepLR", "step_size": 2, "gamma": 0.5, "warmup_steps": 3}
    scheduler = build_scheduler(optimizer_with_lr(), spec)
    lrs(scheduler, 2)
    state = copy.deepcopy(scheduler.state_dict())
    expected = lrs(scheduler, 6)

    optimizer = optimizer_with_lr()
    restored = build_scheduler(optimizer, spec)
    restored.load_state_dict(state)
    optimizer.param_groups[0]["lr"] = state["_last_lr"][0]  # the optimizer's own state_dict carries the lr
    assert lrs(restored, 6) == pytest.approx(expected)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"name": "ReduceLROnPlateau"}, ["training_spec.scheduler.name", "ReduceLROnPlateau", "metric"]),
        ({"name": "LambdaLR", "lr_lambda": 0.5}, ["training_spec.scheduler.name", "LambdaLR"]),
        ({"name": "StepLr", "step_size": 1}, ["training_spec.scheduler.name", "'StepLr'", "'StepLR'"]),
        ({"name": "StepLR", "step": 1}, ["StepLR does not accept 'step'", "step_size"]),
        ({"name": "StepLR"}, ["training_spec.scheduler", "StepLR", "step_size"]),
        ({"name": "LinearWarmup", "warmup_steps": 2, "gamma": 0.5}, ["training_spec.scheduler", "'gamma'"]),
        ({"warmup_steps": -1}, ["training_spec.scheduler.warmup_steps", "-1"]),
        ({"warmup_steps": 2.5}, ["training_spec.scheduler.warmup_steps", "2.5", "integer >= 0"]),
        ({"warmup_steps": True}, ["training_spec.scheduler.warmup_steps", "True"]),
        ({"name": "LinearLR", "start_factor": 2.0}, ["training_spec.scheduler", "LinearLR", "start_factor"]),
        (["StepLR"], ["training_spec.scheduler", "mapping"]),
    ],
)
def test_build_scheduler_errors(spec, expected):
    with pytest.raises(ConfigError) as error:
        build_scheduler(optimizer_with_lr(), spec)
    message = str(error.value)
    assert "\n" not in message
    for part in expected:
        assert part in message
