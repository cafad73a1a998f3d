"""Learning-rate schedules built from `training_spec.scheduler`: a torch scheduler stepped per epoch
or per optimizer step, times a linear warm-up over the first optimizer steps, with a horizon that
defaults to the run's length; every bad setting is a `ConfigError`.
"""

import copy
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer, lr_scheduler

from sequifier.errors import ConfigError
from sequifier.train.optim import config_kwargs, construct, pick_class, public_classes

_UNSUPPORTED_SCHEDULERS = {
    "ReduceLROnPlateau": "the scheduler is stepped without a metric",
    **dict.fromkeys(
        ("LambdaLR", "MultiplicativeLR", "SequentialLR", "ChainedScheduler"),
        "it takes Python functions or schedulers, not config values",
    ),
}


log = logging.getLogger(__name__)

SCHEDULER = "training_spec.scheduler"
STEP_ON = ("epoch", "batch")

# The argument that sets how long a scheduler runs (defaulted to the run), and the attributes it sets.
# CosineAnnealingWarmRestarts and CyclicLR repeat by design, ConstantLR's total_iters ends a phase.
_HORIZONS = {
    "CosineAnnealingLR": ("T_max", ("T_max",)),
    "LinearLR": ("total_iters", ("total_iters",)),
    "PolynomialLR": ("total_iters", ("total_iters",)),
    "OneCycleLR": ("total_steps", ("total_steps", "_schedule_phases")),
}


@dataclass(frozen=True)
class RunLength:
    """How long the run is: training_spec.epochs and the optimizer steps of one epoch (per process,
    after gradient accumulation)."""

    epochs: int
    steps_per_epoch: int

    def steps(self, step_on: str) -> int:
        """The run's length in the scheduler's steps."""
        return self.epochs if step_on == "epoch" else self.epochs * self.steps_per_epoch


def _unit(step_on: str) -> str:
    return "epoch" if step_on == "epoch" else "optimizer step"


def _count(n: int, step_on: str) -> str:
    return f"{n} {_unit(step_on)}{'' if n == 1 else 's'}"


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class _Parsed:
    """A scheduler block: the torch class (None: warm-up alone), its arguments as given, the warm-up
    and the horizon argument that defaults to the run (None where the user set it or there is none)."""

    cls: type | None
    kwargs: dict[str, Any]
    warmup: int
    follows_run: str | None

    def arguments(self, optimizer: Optimizer, horizon: int) -> dict[str, Any]:
        """The keyword arguments with the defaults filled in, for `optimizer` and a run of `horizon`."""
        kwargs = dict(self.kwargs)
        if self.follows_run is not None:
            kwargs[self.follows_run] = horizon
        if self.cls is lr_scheduler.OneCycleLR and "max_lr" not in kwargs:
            lrs = [group["lr"] for group in optimizer.param_groups]
            kwargs["max_lr"] = lrs[0] if len(set(lrs)) == 1 else lrs
        return kwargs

    def build(self, optimizer: Optimizer, horizon: int) -> lr_scheduler.LRScheduler:
        assert self.cls is not None
        return construct(SCHEDULER, self.cls, optimizer, self.arguments(optimizer, horizon))


def _parse(spec: Any) -> _Parsed:
    kwargs = config_kwargs(SCHEDULER, spec)
    name = kwargs.pop("name", None)
    warmup = kwargs.pop("warmup_steps", 0)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"{SCHEDULER}.warmup_steps: {warmup!r} is invalid; expected an integer >= 0")
    if name is None or name == "LinearWarmup":
        if kwargs:
            raise ConfigError(f"{SCHEDULER}: LinearWarmup takes only 'warmup_steps', got {sorted(kwargs)}")
        return _Parsed(None, {}, warmup, None)
    if isinstance(name, str) and name in _UNSUPPORTED_SCHEDULERS:
        raise ConfigError(f"{SCHEDULER}.name: {name!r} is not supported: {_UNSUPPORTED_SCHEDULERS[name]}")
    classes = public_classes(lr_scheduler, lr_scheduler.LRScheduler)
    classes = {n: c for n, c in classes.items() if n not in _UNSUPPORTED_SCHEDULERS}
    cls = pick_class(
        f"{SCHEDULER}.name", "scheduler", name, {**classes, "LinearWarmup": lr_scheduler.LinearLR}
    )
    key = _HORIZONS[cls.__name__][0] if cls.__name__ in _HORIZONS else None
    given = ("total_steps", "epochs", "steps_per_epoch") if cls is lr_scheduler.OneCycleLR else (key,)
    follows_run = key if key is not None and not any(k in kwargs for k in given) else None
    return _Parsed(cls, kwargs, warmup, follows_run)


def _check_length(parsed: _Parsed, step_on: str, run: RunLength) -> None:
    """A given horizon shorter than the run: an error where torch would fail mid-run, else a warning
    that says what the learning rate will do. Likewise a warm-up longer than the run."""
    total_steps = run.steps("batch")
    if parsed.warmup > total_steps:
        log.warning(
            "%s.warmup_steps: %d optimizer steps is longer than the run (%d optimizer steps): the learning "
            "rate rises to only %.0f%% of its schedule",
            SCHEDULER, parsed.warmup, total_steps, 100 * total_steps / parsed.warmup,
        )  # fmt: skip
    if parsed.cls is None or parsed.follows_run is not None or parsed.cls.__name__ not in _HORIZONS:
        return
    name, kwargs, length = parsed.cls.__name__, parsed.kwargs, run.steps(step_on)
    unit, run_text = _unit(step_on), _count(length, step_on)
    if name == "OneCycleLR":
        total, epochs, per_epoch = (
            kwargs.get("total_steps"),
            kwargs.get("epochs"),
            kwargs.get("steps_per_epoch"),
        )
        given = f"total_steps: {total}"
        if total is None and _is_count(epochs) and _is_count(per_epoch):
            total = epochs * per_epoch
            given = f"epochs × steps_per_epoch: {epochs} × {per_epoch} = {total}"
        if _is_count(total) and total < length:
            raise ConfigError(
                f"{SCHEDULER}.{given} {unit}s is shorter than the run ({run_text}): OneCycleLR would stop "
                f"the training with an error after {unit} {total + 1}; leave out total_steps, epochs and "
                f"steps_per_epoch (the cycle then spans the run) or set total_steps to at least {length}"
            )
        return
    key = _HORIZONS[name][0]
    value = kwargs[key]
    if not _is_count(value) or not 0 < value < length:
        return
    what = {
        "CosineAnnealingLR": f"reaches eta_min after {unit} {value} and rises again "
        f"(a cosine of period {2 * value})",
        "LinearLR": f"reaches end_factor × learning_rate after {unit} {value} and stays there",
        "PolynomialLR": f"reaches 0 after {unit} {value} and stays there: the rest of the run does not learn",
    }[name]
    log.warning(
        "%s.%s: %s is shorter than the run (%s): %s's learning rate %s; leave %s out to span the run",
        SCHEDULER, key, _count(value, step_on), run_text, name, what, key,
    )  # fmt: skip


def _probe_optimizer(optimizer: Optimizer) -> Optimizer:
    """A throwaway optimizer with `optimizer`'s groups and learning rates and a parameter each."""
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": g["lr"]} for g in optimizer.param_groups]
    return torch.optim.SGD(groups, lr=1.0)


TRIAL_STEPS = 3  # steps of the throwaway schedule


def _try(parsed: _Parsed, spec: dict, optimizer: Optimizer, horizon: int, steps: int) -> None:
    """Step a throwaway copy of the scheduler: some values fail only when the schedule steps (StepLR
    with step_size 0), and that must be found before training, not after an epoch."""
    probe = _probe_optimizer(optimizer)
    trial = parsed.build(probe, horizon)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(steps):
                probe.step()
                trial.step()
    except Exception as err:
        message = str(err).replace("\n", " ")
        raise ConfigError(
            f"{SCHEDULER}: {spec} fails when stepped: {type(err).__name__}: {message}"
        ) from None


class Schedule:
    """The learning rate over a run: an optional torch scheduler (stepped per epoch or per optimizer
    step) times a linear warm-up over the first warmup_steps *optimizer steps*.

    The s-th optimizer step (from 0) takes the main scheduler's lr times min(1, (s + 1) / warmup_steps).
    The main scheduler keeps its own lr: it is put back into the optimizer before the scheduler steps
    (chainable schedulers read it there) and the warm-up factor is applied afterwards."""

    def __init__(
        self,
        optimizer: Optimizer,
        main: lr_scheduler.LRScheduler | None,
        warmup_steps: int = 0,
        step_on: str = "epoch",
        run: RunLength | None = None,
        follow: Callable[[int], lr_scheduler.LRScheduler] | None = None,
    ) -> None:
        """`follow(horizon)`, where the main scheduler's horizon defaults to the run, builds a throwaway
        one of that horizon: a resumed run of another length takes its horizon from it."""
        if step_on not in STEP_ON:
            raise ValueError(f"step_on must be 'epoch' or 'batch', got {step_on!r}")
        self.optimizer, self.main, self.warmup_steps, self.step_on = optimizer, main, warmup_steps, step_on
        self.run, self._follow = run, follow
        self.steps = 0  # optimizer steps done
        self.epochs = 0  # epochs done
        self._epoch_start = 0  # optimizer steps done when the current epoch began
        self._main_lrs = self._own_lrs()
        self._apply()

    def _own_lrs(self) -> list:
        if self.main is not None:
            return list(self.main.get_last_lr())
        return [group["lr"] for group in self.optimizer.param_groups]

    def factor(self) -> float:
        """The warm-up factor of the next optimizer step."""
        return 1.0 if self.warmup_steps == 0 else min(1.0, (self.steps + 1) / self.warmup_steps)

    def get_last_lr(self) -> list:
        """The learning rates of the next optimizer step, per parameter group."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def _apply(self) -> None:
        factor = self.factor()
        for group, lr in zip(self.optimizer.param_groups, self._main_lrs, strict=True):
            group["lr"] = lr * factor

    def _step_main(self) -> None:
        assert self.main is not None
        for group, lr in zip(self.optimizer.param_groups, self._main_lrs, strict=True):
            group["lr"] = lr
        self.main.step()
        self._main_lrs = list(self.main.get_last_lr())

    def after_step(self) -> None:
        """Call after every optimizer step."""
        self.steps += 1
        if self.main is not None and self.step_on == "batch":
            self._step_main()
        self._apply()

    def after_epoch(self) -> None:
        """Call at every epoch's end (after its last after_step)."""
        self.epochs += 1
        self._epoch_start = self.steps
        if self.main is not None and self.step_on == "epoch":
            self._step_main()
        self._apply()

    def state_dict(self) -> dict:
        """Plain data (for a checkpoint loaded with weights_only)."""
        return {
            "steps": self.steps,
            "epochs": self.epochs,
            "epoch_start": self._epoch_start,
            "main_lrs": list(self._main_lrs),
            "main": self.main.state_dict() if self.main is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` left off; call it after the optimizer's load_state_dict, since it sets
        the optimizer's learning rates. A horizon that defaults to the run follows a changed run length."""
        if (
            not isinstance(state, dict)
            or "steps" not in state
            or (state["main"] is None) != (self.main is None)
        ):
            raise ConfigError(
                f"{SCHEDULER}: the checkpoint's scheduler state does not fit this schedule (it was written "
                "by another version of sequifier or for another scheduler); set "
                "training_spec.continue_training: false to start anew"
            )
        self.steps, self.epochs, self._epoch_start = state["steps"], state["epochs"], state["epoch_start"]
        if self.main is not None:
            self.main.load_state_dict(state["main"])
        self._main_lrs = list(state["main_lrs"])
        self._follow_run()
        self._apply()

    def _follow_run(self) -> None:
        """Where the horizon defaults to the run and the run's length changed since the checkpoint, take
        the horizon of the new length and the learning rate it gives at this point."""
        if self._follow is None or self.main is None or self.run is None:
            return
        name = type(self.main).__name__
        key, attributes = _HORIZONS[name]
        if self.step_on == "epoch":
            horizon = self.run.epochs
        else:  # the steps done before this epoch and those of the epochs to come
            horizon = self._epoch_start + (self.run.epochs - self.epochs) * self.run.steps_per_epoch
        horizon = max(horizon, self.main.last_epoch, 1)
        before = getattr(self.main, attributes[0])
        if before == horizon:
            return
        fresh = self._follow(horizon)
        for attribute in attributes:
            setattr(self.main, attribute, copy.deepcopy(getattr(fresh, attribute)))
        old_lr = self._main_lrs[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            closed_form = getattr(self.main, "_get_closed_form_lr", None)
            lrs = list(closed_form() if closed_form is not None else self.main.get_lr())
        self.main._last_lr = lrs  # type: ignore[attr-defined]
        self._main_lrs = list(lrs)
        log.info(
            "%s: %s's %s defaults to the run, which is now %s (the checkpoint's: %s); it follows, and the "
            "learning rate continues on the new run's schedule (%.4g -> %.4g)",
            SCHEDULER, name, key, _count(horizon, self.step_on), _count(before, self.step_on), old_lr, lrs[0],
        )  # fmt: skip


def build_schedule(optimizer: Optimizer, spec: dict | None, step_on: str, run: RunLength) -> Schedule | None:
    """The schedule of `spec` (`training_spec.scheduler`: a `torch.optim.lr_scheduler` class by name, or
    LinearWarmup, with `warmup_steps`) for a run of `run`, the scheduler stepped on `step_on` ("epoch" or
    "batch"); None for a constant learning rate.

    A horizon the user leaves out (CosineAnnealingLR T_max, OneCycleLR total_steps, LinearLR and
    PolynomialLR total_iters) is the run's length in the scheduler's steps; OneCycleLR's max_lr defaults
    to the learning rate. A given horizon shorter than the run is a warning, or a ConfigError where torch
    would fail mid-run. A throwaway copy is stepped a few times first, to find values that fail only then."""
    if spec is None:
        return None
    if step_on not in STEP_ON:
        raise ConfigError(
            f"training_spec.scheduler_step_on: {step_on!r} is invalid; expected 'epoch' or 'batch'"
        )
    parsed = _parse(spec)
    _check_length(parsed, step_on, run)
    if parsed.cls is None:
        return Schedule(optimizer, None, parsed.warmup, step_on, run)
    length = max(1, run.steps(step_on))
    _try(parsed, spec, optimizer, length, min(TRIAL_STEPS, length))
    main = parsed.build(optimizer, length)

    def follow(horizon: int) -> lr_scheduler.LRScheduler:
        return parsed.build(_probe_optimizer(optimizer), horizon)

    return Schedule(optimizer, main, parsed.warmup, step_on, run, follow if parsed.follows_run else None)
