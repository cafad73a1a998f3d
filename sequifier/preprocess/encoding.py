"""How column values become model inputs: id maps for categorical columns, statistics for real ones.

Id maps send each categorical value to an integer. The reserved ids are those of
`sequifier.data.columns`; ordinary values get ids from FIRST_ID up, in sorted order of the values
unless a precomputed map fixes them.
"""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sequifier.data.columns import FIRST_ID, MASK_ID, OTHER_ID, PADDING_ID
from sequifier.data.metadata import Metadata
from sequifier.errors import DataError


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


def sequence_moments(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence: mean and sum of squared deviations (M2) of a real column, whose `values` are
    the sequences' rows one after the other, `counts` of them per sequence (0 gives 0 and 0)."""
    mean, m2 = np.zeros(len(counts)), np.zeros(len(counts))
    filled = counts > 0
    starts = (np.cumsum(counts) - counts)[filled]
    if len(starts):
        mean[filled] = np.add.reduceat(values, starts) / counts[filled]
        deviation = values - np.repeat(mean, counts)
        m2[filled] = np.add.reduceat(deviation * deviation, starts)
    return mean, m2


def combine_moments(counts: np.ndarray, means: np.ndarray, m2: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation of the whole column from per-sequence moments."""
    total = counts.sum()
    if total == 0:
        return 0.0, 0.0
    mean = float(np.sum(counts * means) / total)
    spread = float(np.sum(m2) + np.sum(counts * (means - mean) ** 2))
    std = float(np.sqrt(spread / (total - 1))) if total > 1 else 0.0
    return mean, std


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
            return (values if (mean, std) == (0.0, 1.0) else (values - mean) / std), 0
        keys, ids = self._lookups[column]
        index = pc.index_in(values, value_set=keys).fill_null(-1).to_numpy()
        unknown = index < 0
        return np.where(unknown, OTHER_ID, ids[index]), int(unknown.sum())
