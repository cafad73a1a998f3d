"""AdEMAMix, the optimizer of Pagliardini et al. (2024), "The AdEMAMix Optimizer: Better, Faster, Older":
Adam with a second, slow EMA of the gradient mixed in."""

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer


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
