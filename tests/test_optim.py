"""AdEMAMix and the optimizer and scheduler builders of sequifier.train.optim."""

import io
import math

import pytest
import torch

from sequifier.errors import ConfigError
from sequifier.model.network import ModelArgs, Transformer
from sequifier.train.ademamix import AdEMAMix, _beta3_at
from sequifier.train.optim import build_optimizer, parameter_groups


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
        model.heads[0].bias,
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
