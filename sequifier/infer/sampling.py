"""Controlled sampling: how a prediction of a column of `sample_from_distribution_columns` is drawn.

The infer config's `temperature`, `top_k` and `top_p` hold for every sampled column (they are
global, not per column). A categorical column's class probabilities p are tempered
(p^(1/temperature), renormalized), then cut to the top_k most likely classes, then to the smallest
set of the most likely classes whose probability reaches top_p (nucleus), renormalized; one class
is drawn from what is left. temperature 0 or top_k 1 is the argmax exactly (no draw is taken).
A real column of a GaussianNLLLoss model is drawn from N(mean, variance * temperature) (the
tempered normal density); top_k and top_p do not apply to it. Draws come from one seeded
generator, so a seed gives the same draws, whether the model runs as a pt bundle or in ONNX.
The probabilities written (output_probabilities) are the model's own, untouched.
"""

import math

import numpy as np

KEYS = ("temperature", "top_k", "top_p")


def std_columns(written: list, gaussian: list, keys: tuple) -> dict:
    """{target: the column its predicted standard deviation is written to}: `{target}_std`, with
    one more leading `_` while that name is taken by a key column, a target written or another
    such column, so it never collides."""
    taken, found = {*keys, *written}, {}
    for target in gaussian:
        name = f"{target}_std"
        while name in taken:
            name = f"_{name}"
        taken.add(name)
        found[target] = name
    return found


def check_keys(config: dict, fail) -> None:
    """Values the schema lets through that are no number (nan, inf), and the sampling keys set
    without any column to sample (they would do nothing), are an error."""
    for key, expected in (("temperature", "a finite number >= 0"), ("top_p", "a number in (0, 1]")):
        if config.get(key) is not None and not math.isfinite(config[key]):
            fail(f"{key}: {config[key]}, but it must be {expected}")
    if config["sample_from_distribution_columns"]:
        return
    for key in KEYS:
        if config.get(key) is not None:
            fail(
                f"{key}: {config[key]}, but sample_from_distribution_columns is empty; {key} shapes the "
                "draws of the sampled columns: name the columns to sample, or leave out " + key
            )


def check_columns(config: dict, sampled: list, categorical: list, fail) -> None:
    """top_k and top_p cut classes: they need a categorical column among those sampled."""
    if any(name in categorical for name in sampled):
        return
    for key in ("top_k", "top_p"):
        if config.get(key) is not None:
            fail(
                f"{key}: {config[key]}, but sample_from_distribution_columns ({', '.join(sampled)}) holds "
                f"no categorical target; {key} applies to class probabilities only (a real column is "
                "drawn from its normal distribution, shaped by temperature)"
            )


def draw(probabilities: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    """One class index per row, drawn from its distribution (rows need not sum to 1)."""
    cumulative = probabilities.cumsum(axis=1)
    draws = generator.random(len(probabilities))[:, None] * cumulative[:, -1:]
    found = (cumulative <= draws).sum(axis=1)
    return np.minimum(found, probabilities.shape[1] - 1)


def truncated(probabilities: np.ndarray, temperature=None, top_k=None, top_p=None) -> np.ndarray:
    """The distribution draws are taken from: tempered, cut to top_k and to top_p, renormalized,
    [batch, classes]. temperature must be > 0 here (0 is the argmax: see `Sampler`)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if temperature is not None and temperature != 1:
        with np.errstate(divide="ignore"):
            logs = np.log(p)
        logs = (logs - logs.max(axis=1, keepdims=True)) / temperature
        p = np.exp(logs)
    p = p / p.sum(axis=1, keepdims=True)
    if top_k is None and top_p is None:
        return p
    order = np.argsort(-p, axis=1, kind="stable")  # most likely first; ties in class order
    ranked = np.take_along_axis(p, order, axis=1)
    keep = np.ones_like(ranked, dtype=bool)
    if top_k is not None:
        keep[:, top_k:] = False
    if top_p is not None:
        before = np.cumsum(ranked, axis=1) - ranked  # the mass of the classes more likely than each
        keep &= before < top_p  # the smallest set reaching top_p; the most likely class always stays
    kept = np.zeros_like(p)
    np.put_along_axis(kept, order, np.where(keep, ranked, 0.0), axis=1)
    return kept / kept.sum(axis=1, keepdims=True)


class Sampler:
    """The draws of the sampled columns of one model, from the config's seed and settings."""

    def __init__(self, config: dict):
        self.generator = np.random.default_rng(config["seed"])
        temperature = config.get("temperature")
        self.temperature = 1.0 if temperature is None else float(temperature)
        self.top_k, self.top_p = config.get("top_k"), config.get("top_p")

    def argmax_only(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    def categorical(self, probabilities: np.ndarray) -> np.ndarray:
        """One class index per row."""
        if self.argmax_only():
            return probabilities.argmax(axis=1)
        cut = truncated(probabilities, self.temperature, self.top_k, self.top_p)
        return draw(cut, self.generator)

    def real(self, mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
        """One value per row from N(mean, variance * temperature), in the model's scale."""
        if self.temperature == 0:
            return mean
        noise = self.generator.standard_normal(len(mean))
        return mean + noise * np.sqrt(variance * self.temperature)
