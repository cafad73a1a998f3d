"""Inference with masked models (`objective: masked` in training): filling in items, and the
embeddings of every position.

A masked model reads a window's last S items (items 1..W, as in its training). A generative one
fills in the items at `mask_positions` (indices into those S items, negative from the end;
default [-1], the last item, so that it predicts what a causal model would, from the items
before it): each is replaced by the mask (categorical: id 2; real: NaN) and predicted from the
items on both sides. A row is written per window and masked position that is not padding:
`sequenceId, itemPosition, <targets>` in the input's values, itemPosition being the filled-in
item's (counted back from the window's last item by the step between its last two items). An
embedding model writes, with `masked_embedding: positions`, a row per item of the window that is
not padding (`sequenceId, subsequenceId, itemPosition, 0..dim_model-1`), with `mean`, a row
per window: the mean over those items, at the window's last itemPosition.
"""

import numpy as np

from sequifier.data.columns import LAST, MASK_ID, SEQUENCE, STEP, SUBSEQUENCE
from sequifier.data.window_files import IDS, PAD


def check_masked(config: dict, args, fail) -> None:
    """The infer settings a model's objective allows; `fail(message)` raises the ConfigError."""
    if args.objective != "masked":
        if config["mask_positions"] is not None:
            fail(f"mask_positions: {config['mask_positions']}, but the model is causal (it has no mask)")
        if config["masked_embedding"] == "mean":
            fail("masked_embedding: mean, but the model is causal: its embedding is the last item's")
        return
    if config["autoregression"]:
        fail(
            "autoregression: true, but the model is masked (objective: masked): it fills in items "
            "(mask_positions) instead of generating the next ones; set autoregression: false"
        )
    length = args.seq_length
    for position in config["mask_positions"] or []:
        if not -length <= position < length:
            fail(
                f"mask_positions: {position} is outside the model's {length} items "
                f"({-length} to {length - 1})"
            )


def positions_of(chunk: dict, length: int) -> np.ndarray:
    """[windows, S]: the itemPosition of each of a window's last S items."""
    last, step = (chunk[IDS][name].astype(np.int64) for name in (LAST, STEP))
    return last[:, None] - step[:, None] * np.arange(length - 1, -1, -1)[None, :]


def real_items(chunk: dict, length: int) -> np.ndarray:
    """[windows, S]: which of a window's last S items are items, not padding."""
    padding = chunk[PAD].numpy().astype(np.int64) - 1  # the window's slot 0 is not among them
    return np.arange(length)[None, :] >= padding[:, None]


def filled_tables(model, chunk: dict, mask_positions) -> list:
    """(output name, columns) of the items at mask_positions of every window, filled in."""
    context = model.encode(chunk)
    length = next(iter(context.values())).shape[1]
    slots = sorted({p % length for p in (mask_positions or [-1])})
    for name, kind, *_ in model.predictor.args.input_columns:
        block = context[name].copy()
        block[:, slots] = MASK_ID if kind == "categorical" else np.nan
        context[name] = block
    sequences = chunk[IDS][SEQUENCE]
    outputs = model.forward(context, sequences)
    keep = real_items(chunk, length)[:, slots]  # [windows, slots]
    picked = {name: out[:, slots][keep] for name, out in outputs.items()}
    values, probabilities, _ = model.decode(picked)
    rows = np.repeat(sequences[:, None], len(slots), axis=1)[keep]
    return model.prediction_tables(rows, positions_of(chunk, length)[:, slots][keep], values, probabilities)


def embedding_tables(model, chunk: dict, pooling: str) -> list:
    """(output name, columns) of every item's embedding, or of their mean per window."""
    ids = chunk[IDS]
    hidden = model.embed(model.encode(chunk), ids[SEQUENCE])  # [windows, S, dim_model]
    keep = real_items(chunk, hidden.shape[1])
    if pooling == "mean":
        mean = (hidden * keep[..., None]).sum(axis=1) / np.maximum(keep.sum(axis=1), 1)[:, None]
        return model.embedding_tables(ids, ids[LAST].astype(np.int64), mean.astype(np.float32))
    per_window = {
        name: np.repeat(ids[name][:, None], hidden.shape[1], axis=1)[keep] for name in (SEQUENCE, SUBSEQUENCE)
    }
    return model.embedding_tables(per_window, positions_of(chunk, hidden.shape[1])[keep], hidden[keep])


def masked_tables(model, chunk: dict, config: dict) -> list:
    """(output name, columns) of a chunk of windows for a masked model."""
    if len(chunk[PAD]) == 0:
        return []
    if model.embedding:
        return embedding_tables(model, chunk, config["masked_embedding"])
    return filled_tables(model, chunk, config["mask_positions"])
