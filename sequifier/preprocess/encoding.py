"""How column values become model inputs: id maps for categorical columns, statistics for real ones.

Id maps send each categorical value to an integer. The reserved ids are those of
`sequifier.data.columns`; ordinary values get ids from FIRST_ID up, in sorted order of the values
unless a precomputed map fixes them.
"""

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sequifier.data.columns import FIRST_ID, MASK_ID, OTHER_ID, PADDING_ID, SEQUENCE
from sequifier.data.metadata import Metadata
from sequifier.errors import DataError

FLOAT32_MAX = float(np.finfo(np.float32).max)  # training and inference read real values as float32
RESCALE = "rescale the column before preprocessing (divide it by a power of ten, or take a logarithm)"


def value_counts(column) -> dict:
    """The distinct values of a column, sorted, and how often each occurs: {"values", "counts"}
    as JSON-ready lists."""
    found = pc.value_counts(column)
    values = found.field("values").to_numpy(zero_copy_only=False)
    order = np.argsort(values, kind="stable")
    counts = found.field("counts").to_numpy()
    return {"values": values[order].tolist(), "counts": counts[order].tolist()}


def merge_counts(found) -> dict:
    """{value: count} summed over several `value_counts` results."""
    total = {}
    for item in found:
        for value, count in zip(item["values"], item["counts"]):
            total[value] = total.get(value, 0) + count
    return total


def build_id_map(values: list) -> dict:
    return {value: FIRST_ID + i for i, value in enumerate(values)}


def _parse_key(key: str, dtype: str, path: Path):
    if dtype != "int64":
        return key
    try:
        return int(key)
    except ValueError:
        raise DataError(f"{path}: key {key!r} is not an integer, but the column holds integers") from None


def load_precomputed_map(path: Path, column: str, dtype: str) -> dict:
    """A user's fixed id map {value: id}; ids must be distinct integers from 3 up."""
    if not path.is_file():
        raise DataError(f"{path}: precomputed id map for column '{column}' not found (use_precomputed_maps)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: expected a non-empty JSON object {{value: id}}")
    id_map = {}
    for key, value in raw.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < FIRST_ID:
            raise DataError(
                f"{path}: value {key!r} has id {value!r}; ids must be integers from {FIRST_ID} up "
                f"({PADDING_ID}, {OTHER_ID} and {MASK_ID} are reserved)"
            )
        parsed = _parse_key(key, dtype, path)
        if parsed in id_map:
            raise DataError(f"{path}: keys {key!r} and another key are the same value {parsed!r}")
        id_map[parsed] = value
    if len(set(id_map.values())) != len(id_map):
        raise DataError(f"{path}: two values share an id; every value needs its own id")
    return id_map


def sequence_moments(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sequence of a real column, whose `values` are the sequences' rows one after the other,
    `counts` of them per sequence: (mean, M2, exponent), M2 the sum of squared deviations in units
    of 4 ** exponent, 2 ** exponent above the sequence's largest magnitude (0, 0, 0 for none).

    The values are scaled by that power of two (exactly) before they are summed, so that neither
    the sums nor M2 overflow, even for values near the float64 limit."""
    mean, m2, exponent = np.zeros(len(counts)), np.zeros(len(counts)), np.zeros(len(counts), dtype=np.int64)
    filled = counts > 0
    starts = (np.cumsum(counts) - counts)[filled]
    if len(starts):
        exponent[filled] = np.frexp(np.maximum.reduceat(np.abs(values), starts))[1]
        scaled = np.ldexp(values, -np.repeat(exponent, counts))
        scaled_mean = np.zeros(len(counts))
        scaled_mean[filled] = np.add.reduceat(scaled, starts) / counts[filled]
        deviation = scaled - np.repeat(scaled_mean, counts)
        m2[filled] = np.add.reduceat(deviation * deviation, starts)
        mean = np.ldexp(scaled_mean, exponent)
    return mean, m2, exponent


def combine_moments(counts: np.ndarray, means: np.ndarray, m2: np.ndarray, exponents: np.ndarray) -> tuple:
    """Mean and sample standard deviation of the whole column from per-sequence moments
    (`sequence_moments`), summed in units of the largest power of two; inf or NaN where the result
    itself does not fit in a float64."""
    total = counts.sum()
    if total == 0:
        return 0.0, 0.0
    top = int(exponents[counts > 0].max())
    with np.errstate(over="ignore", invalid="ignore"):
        scaled_means = np.ldexp(means, -top)
        scaled_mean = np.sum(counts * scaled_means) / total
        within = np.sum(np.ldexp(m2, 2 * (exponents - top)))
        spread = within + np.sum(counts * (scaled_means - scaled_mean) ** 2)
        std = float(np.ldexp(np.sqrt(spread / (total - 1)), top)) if total > 1 else 0.0
        return float(np.ldexp(scaled_mean, top)), std


def sequence_extremes(values: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence (of at least one row, starting at `starts`): the smallest and largest value."""
    if len(starts) == 0:
        return np.zeros(0), np.zeros(0)
    return np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts)


class ColumnEncoder:
    """Encodes the values of the columns of a table with the id maps and statistics of a metadata."""

    def __init__(self, metadata: Metadata):
        self.kinds = metadata.column_types
        self.scale = metadata.scale
        self._lookups = {}
        for column in metadata.id_maps:
            dtype = metadata.column_dtypes[column]
            id_map = metadata.id_map(column)
            keys = pa.array(list(id_map), type=pa.int64() if dtype == "int64" else pa.string())
            self._lookups[column] = (keys, np.fromiter(id_map.values(), dtype=np.int64, count=len(id_map)))

    def encode(self, column: str, values) -> tuple[np.ndarray, int]:
        """(encoded values, count of categorical values not in the id map); `values` as Arrow or numpy."""
        if self.kinds[column] == "real":
            if isinstance(values, (pa.Array, pa.ChunkedArray)):
                values = values.to_numpy()
            values = np.asarray(values, dtype=np.float64)
            mean, std = self.scale(column)
            if (mean, std) == (0.0, 1.0):
                return values, 0
            with np.errstate(over="ignore", invalid="ignore"):  # checked: steps.check_real_values
                return (values - mean) / std, 0
        keys, ids = self._lookups[column]
        index = pc.index_in(values, value_set=keys).fill_null(-1).to_numpy()
        unknown = index < 0
        return np.where(unknown, OTHER_ID, ids[index]), int(unknown.sum())


def check_real_values(source, metadata: Metadata, sequences: pa.Table) -> None:
    """Refuse a real column whose statistics are not finite, or whose values, encoded as the windows
    hold them, are not finite float32 numbers. `sequences` holds per sequence the column's smallest
    and largest value ({column}.min, {column}.max), whose encodings bound all others."""
    encoder, ids = ColumnEncoder(metadata), sequences.column(SEQUENCE)
    fitted = "every split" if metadata.fit_on_all_splits else "the training split"
    for column in metadata.real_columns:
        extremes = np.concatenate([sequences.column(f"{column}.{end}").to_numpy() for end in ("min", "max")])
        n = len(extremes) // 2
        for statistics, over in (
            (metadata.selected_columns_statistics, fitted),
            (metadata.training_statistics, "the training split"),
        ):
            for key, name in (("mean", "mean"), ("std", "standard deviation")):
                if not math.isfinite(statistics[column][key]):
                    i = int(np.argmax(np.abs(extremes)))
                    raise DataError(
                        f"{source}: real column '{column}': its {name} over {over} is "
                        f"{statistics[column][key]}, not a finite number (its values reach "
                        f"{extremes[i]:.6g}, sequenceId {ids[i % n].as_py()!r}); {RESCALE}"
                    )
        encoded = encoder.encode(column, extremes)[0]
        bad = np.flatnonzero(~(np.abs(encoded) <= FLOAT32_MAX))
        if len(bad):
            i = int(bad[0])
            mean, std = metadata.scale(column)
            how, advice = "(normalize_real_columns is false)", ", or set normalize_real_columns: true"
            if metadata.normalize_real_columns:
                how, advice = f"after standardizing (mean {mean:.6g}, std {std:.6g})", ""
            raise DataError(
                f"{source}: real column '{column}': value {extremes[i]:.6g} (sequenceId "
                f"{ids[i % n].as_py()!r}) is {encoded[i]:.6g} {how}, beyond the float32 numbers the "
                f"model reads (up to {FLOAT32_MAX:.6g} in magnitude); {RESCALE}{advice}"
            )
