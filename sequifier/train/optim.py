"""Optimizers built from `training_spec.optimizer`, and the config helpers that schedules share.

`build_optimizer` turns `training_spec.optimizer` into a torch optimizer (a `torch.optim` class or
AdEMAMix) with weight decay on weight matrices and embeddings only, and reports every bad setting as
a `ConfigError`. Learning-rate schedules are in `sequifier.train.schedules`.
"""

import difflib
import inspect
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from sequifier.errors import ConfigError
from sequifier.train.ademamix import AdEMAMix


def public_classes(module: Any, base: type) -> dict[str, type]:
    """The public subclasses of `base` in `module`, by name."""
    return {
        name: cls
        for name, cls in vars(module).items()
        if isinstance(cls, type) and issubclass(cls, base) and cls is not base and not name.startswith("_")
    }


def pick_class(path: str, kind: str, name: Any, classes: dict[str, type]) -> type:
    """`classes[name]`, or a ConfigError with a did-you-mean and the allowed names."""
    if isinstance(name, str) and name in classes:
        return classes[name]
    allowed = sorted(classes)
    close = difflib.get_close_matches(str(name), allowed, n=3)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ";"
    raise ConfigError(f"{path}: unknown {kind} {name!r}{hint} allowed: {', '.join(allowed)}")


def construct(path: str, cls: type, first: Any, kwargs: dict[str, Any]) -> Any:
    """`cls(first, **kwargs)`, with an unknown keyword or a bad value reported as a ConfigError."""
    parameters = inspect.signature(cls).parameters
    accepted = [n for n in parameters if n not in ("params", "optimizer", "lr")]
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(k for k in kwargs if k not in parameters or k in ("params", "optimizer"))
        if unknown:
            raise ConfigError(
                f"{path}: {cls.__name__} does not accept {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(accepted)}"
            )
    try:
        return cls(first, **kwargs)
    except Exception as err:  # whatever the constructor raises on a bad value is a bad config
        message = str(err).replace("\n", " ")
        raise ConfigError(f"{path}: {cls.__name__}({kwargs}) is invalid: {message}") from None


def config_kwargs(path: str, spec: Any) -> dict[str, Any]:
    """A copy of the config block, lists turned into tuples (betas: [0.9, 0.95])."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'name' key, got {spec!r}")
    return {k: tuple(v) if isinstance(v, list) and k != "name" else v for k, v in spec.items()}


def _trainable(model: torch.nn.Module | Iterable) -> list[torch.Tensor]:
    """The parameters that take gradients, each once, in order: of a module, or of an iterable of
    tensors or of (name, tensor) pairs (`named_parameters()`)."""
    items = model.parameters() if isinstance(model, torch.nn.Module) else model
    seen, params = set(), []
    for item in items:
        p = item[1] if isinstance(item, tuple) else item
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    return params


def parameter_groups(model: torch.nn.Module | Iterable) -> list[dict[str, Any]]:
    """The trainable parameters in two groups, as nanoGPT does: weight matrices and embeddings (dim >= 2)
    take the optimizer's weight_decay; norm weights and biases (dim < 2) take weight_decay 0.
    `model` is a module or its (named) parameters; an empty group is left out."""
    params = _trainable(model)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups: list[dict[str, Any]] = [{"params": decay}] if decay else []
    return groups + ([{"params": no_decay, "weight_decay": 0.0}] if no_decay else [])


# torch.optim classes that cannot train the model, and why
UNSUITED = {
    "SparseAdam": "it takes sparse gradients only, and the model's are dense (Adam is its dense form)",
    "Muon": "it optimizes 2-D weight matrices only, and the model also has biases, norms and embeddings",
}


def optimizer_class(spec: dict) -> type:
    """The class `spec["name"]` names: a `torch.optim` class that can train the model, or AdEMAMix.
    Those whose step needs a closure (LBFGS) are refused, since the training loop computes the
    gradients once per step, as are those of UNSUITED."""
    path = "training_spec.optimizer"
    name = config_kwargs(path, spec).get("name")
    found = {**public_classes(torch.optim, Optimizer), "AdEMAMix": AdEMAMix}
    reasons = {
        key: UNSUITED.get(key)
        or "its step needs a closure that computes the loss again, several times per step, while "
        "sequifier computes the gradients once per step"
        for key, cls in found.items()
        if key in UNSUITED or _needs_closure(cls)
    }
    classes = {key: cls for key, cls in found.items() if key not in reasons}
    if name is None:
        raise ConfigError(f"{path}.name: missing; allowed: {', '.join(sorted(classes))}")
    if isinstance(name, str) and name in reasons:
        raise ConfigError(
            f"{path}.name: {name} cannot train a sequifier model: {reasons[name]}; choose another "
            f"optimizer (allowed: {', '.join(sorted(classes))})"
        )
    return pick_class(f"{path}.name", "optimizer", name, classes)


def _needs_closure(cls: type) -> bool:
    closure = inspect.signature(cls.step).parameters.get("closure")
    return closure is not None and closure.default is inspect.Parameter.empty


def build_optimizer(model: torch.nn.Module | Iterable, spec: dict, learning_rate: float) -> Optimizer:
    """The optimizer named by `spec["name"]` (a `torch.optim` class or AdEMAMix); other keys are kwargs.

    `model` is a module or its (named) parameters; those without gradients are left out. When the class
    takes `weight_decay`, it applies to the weight matrices and embeddings only (`parameter_groups`)."""
    path = "training_spec.optimizer"
    kwargs = config_kwargs(path, spec)
    cls = optimizer_class(spec)
    kwargs.pop("name")
    if "lr" in kwargs:
        raise ConfigError(f"{path}.lr: not allowed here; set training_spec.learning_rate instead")
    params = _trainable(model)
    if not params:
        raise ValueError("build_optimizer got no parameters to optimize")
    groups = parameter_groups(params) if "weight_decay" in inspect.signature(cls).parameters else params
    return construct(path, cls, groups, {"lr": learning_rate, **kwargs})
