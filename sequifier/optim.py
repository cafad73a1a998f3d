"""Optimizers and learning-rate schedulers built from the `training_spec` config blocks.

`AdEMAMix` is the optimizer of Pagliardini et al. (2024), "The AdEMAMix Optimizer: Better, Faster, Older".
`build_optimizer` and `build_scheduler` turn `training_spec.optimizer` and `training_spec.scheduler` into
torch objects and report every bad setting as a `ConfigError`.
"""

import difflib
import inspect
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer, lr_scheduler

from sequifier.errors import ConfigError

_UNSUPPORTED_SCHEDULERS = {
    "ReduceLROnPlateau": "the scheduler is stepped without a metric",
    **dict.fromkeys(
        ("LambdaLR", "MultiplicativeLR", "SequentialLR", "ChainedScheduler"),
        "it takes Python functions or schedulers, not config values",
    ),
}


def _alpha_at(step: int, alpha: float, warmup: int | None) -> float:
    """Linear warm-up of alpha from 0 (Algorithm 1's alpha scheduler)."""
    return alpha if warmup is None or step >= warmup else alpha * step / warmup


def _beta3_at(step: int, beta_start: float, beta_end: float, warmup: int | None) -> float:
    """Warm-up of beta3 from beta1, linear in the EMA's half-life (Algorithm 1's beta3 scheduler)."""
    if warmup is None or step >= warmup:
        return beta_end

    def half_life(beta: float) -> float:
        return math.log(0.5) / math.log(beta + 1e-8) - 1

    a = step / warmup
    return 0.5 ** (1.0 / ((1.0 - a) * half_life(beta_start) + a * half_life(beta_end) + 1.0))


class AdEMAMix(Optimizer):
    """Adam with a second, slow EMA of the gradient mixed in with weight `alpha`; decoupled weight decay."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 5.0,
        t_alpha_beta3: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate {lr!r}: must be >= 0")
        if len(betas) != 3 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid betas {betas!r}: need three values in [0, 1)")
        if not alpha >= 0.0:
            raise ValueError(f"invalid alpha {alpha!r}: must be >= 0")
        if t_alpha_beta3 is not None and (isinstance(t_alpha_beta3, bool) or not t_alpha_beta3 > 0):
            raise ValueError(f"invalid t_alpha_beta3 {t_alpha_beta3!r}: must be a positive int or None")
        if not eps >= 0.0:
            raise ValueError(f"invalid eps {eps!r}: must be >= 0")
        if not weight_decay >= 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay!r}: must be >= 0")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            alpha=alpha,
            t_alpha_beta3=t_alpha_beta3,
            eps=eps,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step; `closure` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
            beta1, beta2, beta3_final = group["betas"]
            warmup = group["t_alpha_beta3"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("AdEMAMix does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg_fast"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_slow"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                alpha = _alpha_at(state["step"], group["alpha"], warmup)
                beta3 = _beta3_at(state["step"], beta1, beta3_final, warmup)
                state["step"] += 1
                bias_correction1 = 1 - beta1 ** state["step"]
                bias_correction2 = 1 - beta2 ** state["step"]
                fast, slow, sq = state["exp_avg_fast"], state["exp_avg_slow"], state["exp_avg_sq"]
                fast.mul_(beta1).add_(grad, alpha=1 - beta1)
                slow.mul_(beta3).add_(grad, alpha=1 - beta3)
                sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
                if weight_decay != 0.0:
                    p.mul_(1 - lr * weight_decay)
                update = fast / bias_correction1
                if alpha != 0.0:
                    update.add_(slow, alpha=alpha)
                p.addcdiv_(update, denom, value=-lr)
        return loss


def _classes(module: Any, base: type) -> dict[str, type]:
    """The public subclasses of `base` in `module`, by name."""
    return {
        name: cls
        for name, cls in vars(module).items()
        if isinstance(cls, type) and issubclass(cls, base) and cls is not base and not name.startswith("_")
    }


def _pick(path: str, kind: str, name: Any, classes: dict[str, type]) -> type:
    """`classes[name]`, or a ConfigError with a did-you-mean and the allowed names."""
    if isinstance(name, str) and name in classes:
        return classes[name]
    allowed = sorted(classes)
    close = difflib.get_close_matches(str(name), allowed, n=3)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ";"
    raise ConfigError(f"{path}: unknown {kind} {name!r}{hint} allowed: {', '.join(allowed)}")


TRIAL_STEPS = 3  # steps of the throwaway schedule


def _construct(path: str, cls: type, first: Any, kwargs: dict[str, Any]) -> Any:
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


def _kwargs(path: str, spec: Any) -> dict[str, Any]:
    """A copy of the config block, lists turned into tuples (betas: [0.9, 0.95])."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'name' key, got {spec!r}")
    return {k: tuple(v) if isinstance(v, list) and k != "name" else v for k, v in spec.items()}


def build_optimizer(parameters: Iterable, spec: dict, learning_rate: float) -> Optimizer:
    """The optimizer named by `spec["name"]` (a `torch.optim` class or AdEMAMix); other keys are kwargs."""
    path = "training_spec.optimizer"
    kwargs = _kwargs(path, spec)
    classes = {**_classes(torch.optim, Optimizer), "AdEMAMix": AdEMAMix}
    if kwargs.get("name") is None:
        raise ConfigError(f"{path}.name: missing; allowed: {', '.join(sorted(classes))}")
    cls = _pick(f"{path}.name", "optimizer", kwargs.pop("name"), classes)
    if "lr" in kwargs:
        raise ConfigError(f"{path}.lr: not allowed here; set training_spec.learning_rate instead")
    params = list(parameters)
    if not params:
        raise ValueError("build_optimizer got no parameters to optimize")
    return _construct(path, cls, params, {"lr": learning_rate, **kwargs})


def build_scheduler(optimizer: Optimizer, spec: dict | None) -> lr_scheduler.LRScheduler | None:
    """The scheduler of `spec` (a `torch.optim.lr_scheduler` class or LinearWarmup), with optional warm-up.

    A throwaway copy is stepped a few times first: some values fail only when the schedule steps
    (StepLR with step_size 0), and that must be found before training, not after an epoch."""
    if spec is None:
        return None
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    trial = _build_scheduler(probe, spec)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(TRIAL_STEPS):
                probe.step()
                trial.step()
    except Exception as err:
        message = str(err).replace("\n", " ")
        raise ConfigError(
            f"training_spec.scheduler: {spec} fails when stepped: {type(err).__name__}: {message}"
        ) from None
    return _build_scheduler(optimizer, spec)


def _build_scheduler(optimizer: Optimizer, spec: dict) -> lr_scheduler.LRScheduler:
    path = "training_spec.scheduler"
    kwargs = _kwargs(path, spec)
    name = kwargs.pop("name", None)
    warmup = kwargs.pop("warmup_steps", 0)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"{path}.warmup_steps: {warmup!r} is invalid; expected an integer >= 0")
    if name is None or name == "LinearWarmup":
        if kwargs:
            raise ConfigError(f"{path}: LinearWarmup takes only 'warmup_steps', got {sorted(kwargs)}")
        if warmup == 0:
            return lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        return _warmup(optimizer, warmup)
    if isinstance(name, str) and name in _UNSUPPORTED_SCHEDULERS:
        raise ConfigError(f"{path}.name: {name!r} is not supported: {_UNSUPPORTED_SCHEDULERS[name]}")
    classes = _classes(lr_scheduler, lr_scheduler.LRScheduler)
    classes = {n: c for n, c in classes.items() if n not in _UNSUPPORTED_SCHEDULERS}
    cls = _pick(f"{path}.name", "scheduler", name, {**classes, "LinearWarmup": lr_scheduler.LinearLR})
    main = _construct(path, cls, optimizer, kwargs)
    if warmup == 0:
        return main
    return lr_scheduler.SequentialLR(optimizer, [_warmup(optimizer, warmup), main], milestones=[warmup])


def _warmup(optimizer: Optimizer, steps: int) -> lr_scheduler.LRScheduler:
    """Linear warm-up from lr / steps (step 0) to lr (step `steps`), constant afterwards."""
    return lr_scheduler.LinearLR(optimizer, start_factor=1.0 / steps, end_factor=1.0, total_iters=steps)
