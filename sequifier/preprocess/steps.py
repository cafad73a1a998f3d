"""The steps of preprocessing, over parts of the table (each part holds whole sequences):

    partition -> scan {part} -> reduce (metadata) -> windows {part} -> merge {split}

`sequifier.preprocess.run` executes them with a process pool; the Snakemake workflow runs each
as its own job through `sequifier preprocess-step`. Outputs do not depend on the number of parts.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sequifier import __version__
from sequifier.data.columns import FIRST_ID, OTHER_ID, POSITION, SEQUENCE
from sequifier.data.metadata import Metadata, id_map_to_json, split_names
from sequifier.data.streams import prefetched
from sequifier.data.window_files import value_matrix, value_type, window_table, write_windows
from sequifier.data.windows import (
    UnevenStride,
    irregular_sequences,
    split_bounds,
    window_counts,
    windows_of_split,
)
from sequifier.errors import DataError
from sequifier.files import atomic_path, content_hash, read_json, write_json
from sequifier.preprocess import encoding
from sequifier.preprocess.partition import (
    Part,
    read_arrow,
    read_ipc,
    seeded_uniform,
    sort_part,
    write_ipc,
    write_parts,
)
from sequifier.preprocess.plan import Plan, recorded_config
from sequifier.preprocess.reader import read_batches

logger = logging.getLogger(__name__)
WINDOWS_PER_CHUNK = 32768


# --- partition -----------------------------------------------------------------------------


def partition(plan: Plan) -> None:
    """Route every row to the part of its sequence (nothing to do for one part or parts by file)."""
    if not plan.partitioned:
        return
    with atomic_path(plan.part_path(0).parent) as tmp:
        tmp.mkdir()
        paths = [tmp / plan.part_path(p).name for p in range(plan.n_parts)]
        batches = read_batches(list(plan.files), plan.read_format, plan.columns, plan.config["max_rows"])
        write_parts(batches, plan.n_parts, plan.columns.part_schema(), paths)


def load_part(plan: Plan, p: int) -> Part:
    """A part read from the partition step, or straight from the input, then sorted."""
    files = plan.input_of(p)
    if plan.partitioned:
        table = read_arrow(plan.part_path(p))
    else:
        tables = list(read_batches(files, plan.read_format, plan.columns, plan.config["max_rows"]))
        table = pa.concat_tables(tables) if tables else plan.columns.part_schema().empty_table()
    return sort_part(table, files, plan.read_format)


def load_sorted_part(plan: Plan, p: int) -> Part:
    """A part as the scan step left it: sorted, with its sequences' lengths and hashes."""
    sequences = pq.read_table(plan.sequences_path(p), columns=["hash", "length"])
    starts = np.concatenate([[0], np.cumsum(sequences.column("length").to_numpy())]).astype(np.int64)
    return Part(read_arrow(plan.sorted_path(p)), starts, sequences.column("hash").to_numpy())


def part_bounds(plan: Plan, part: Part) -> np.ndarray:
    ratios = plan.config["split_ratios"]
    assigned = None
    if plan.config["split_method"] == "between_sequence":
        cumulative = np.cumsum(ratios)[:-1] / np.sum(ratios)
        assigned = np.searchsorted(cumulative, seeded_uniform(part.hashes, plan.config["seed"]), side="right")
    return split_bounds(part.lengths, ratios, assigned)


# --- scan ----------------------------------------------------------------------------------


def row_splits(part: Part, bounds: np.ndarray) -> np.ndarray:
    """The split of every row of a part, from its sequences' split bounds."""
    lengths = part.lengths
    index = np.arange(int(lengths.sum())) - np.repeat(part.starts[:-1], lengths)
    split = np.zeros(len(index), dtype=np.int8)
    for k in range(1, bounds.shape[1] - 1):
        split += index >= np.repeat(bounds[:, k], lengths)
    return split


def scan(plan: Plan, p: int, write_rows: bool = True) -> Part:
    """Per part: each split's categorical values and their counts, per-sequence moments of real
    columns (over the training split's items, and over all items with fit_on_all_splits), counts.

    The sorted rows are written for the windows step unless the caller keeps `Part` in memory.
    """
    part = load_part(plan, p)
    config = plan.config
    bounds = part_bounds(plan, part)
    try:
        n_windows = window_counts(
            bounds, config["seq_length"], plan.strides, config["subsequence_start_mode"]
        )
    except UnevenStride as error:
        sequence, k = part.sequence_ids()[error.sequence].as_py(), error.split
        raise DataError(
            f"{plan.source}: subsequence_start_mode 'exact': in split {k} the windows of sequence "
            f"{sequence!r} can start over a span of {error.span} items, which stride_by_split[{k}] = "
            f"{error.stride} does not divide ({error.count} sequences of part {p} alike); "
            "use subsequence_start_mode 'distribute' or a stride that divides"
        ) from None
    splits = row_splits(part, bounds)
    training, training_lengths = splits == 0, bounds[:, 1] - bounds[:, 0]
    sequences = {
        SEQUENCE: part.sequence_ids(),
        "hash": pa.array(part.hashes),
        "length": pa.array(part.lengths),
        "training_length": pa.array(training_lengths),
    }
    for column in plan.columns.real():
        values = part.table.column(column).to_numpy()
        fits = [(column, values[training], training_lengths)]
        if config["fit_on_all_splits"]:
            fits.append((f"{column}.all", values, part.lengths))
        for prefix, fitted, lengths in fits:
            moments = encoding.sequence_moments(fitted, lengths)
            for name, found in zip(("mean", "m2", "exp"), moments):
                sequences[f"{prefix}.{name}"] = pa.array(found)
        low, high = encoding.sequence_extremes(values, part.starts[:-1])
        sequences[f"{column}.min"], sequences[f"{column}.max"] = pa.array(low), pa.array(high)
    masks = [pa.array(splits == k) for k in range(len(plan.strides))]
    summary = {
        "rows": int(part.lengths.sum()),
        "sequences": len(part.lengths),
        "items": np.diff(bounds, axis=1).sum(axis=0).tolist(),
        "windows": n_windows,
        "irregular": irregular_sequences(part.table.column(POSITION).to_numpy(), part.starts),
        "values": {
            c: [encoding.value_counts(part.table.column(c).filter(mask)) for mask in masks]
            for c in plan.columns.categorical()
        },
    }
    if write_rows:
        with atomic_path(plan.sorted_path(p)) as tmp:
            write_ipc(tmp, [part.table])
    with atomic_path(plan.sequences_path(p)) as tmp:
        pq.write_table(pa.table(sequences), tmp)
    write_json(plan.scan_path(p), summary)
    return part


# --- reduce --------------------------------------------------------------------------------


def _id_maps(plan: Plan, counts: dict) -> dict:
    """Per categorical column, its id map: precomputed, or built from the values of the training
    split (of every split with fit_on_all_splits). `counts` is {column: [{value: count} per split]}."""
    id_maps = {}
    precomputed = plan.config["use_precomputed_maps"] or []
    fitted = slice(None) if plan.config["fit_on_all_splits"] else slice(0, 1)
    for column in plan.columns.categorical():
        if column in precomputed:
            path = plan.root / plan.config["id_maps_path"] / f"{column}.json"
            id_maps[column] = encoding.load_precomputed_map(path, column, plan.columns.dtype(column))
        else:
            values = set().union(*counts[column][fitted])
            id_maps[column] = encoding.build_id_map(sorted(values))
    return id_maps


def _other_values(plan: Plan, counts: dict, id_maps: dict, names: list) -> dict:
    """Per categorical column with values outside its id map (read as other, id 1): how many
    distinct values, and how many items of each split."""
    found = {}
    for column, per_split in counts.items():
        id_map = id_maps[column]
        unseen = {v for split in per_split for v in split if v not in id_map}
        if not unseen:
            continue
        items = {
            name: sum(n for v, n in split.items() if v not in id_map) for name, split in zip(names, per_split)
        }
        found[column] = {"values": len(unseen), "items": items, "examples": sorted(unseen)[:3]}
        source = (
            "the precomputed map"
            if column in (plan.config["use_precomputed_maps"] or [])
            else "the training split"
        )
        logger.warning(
            "column '%s': %d distinct values are not in %s and read as other (id %d): %s; e.g. %r",
            column, len(unseen), source, OTHER_ID,
            ", ".join(f"{n:,} items of {name}" for name, n in items.items() if n), found[column]["examples"],
        )  # fmt: skip
    return found


def _training_counts(counts: dict, id_maps: dict) -> dict:
    """Per categorical column, how many items of the training split have each id (by id)."""
    found = {}
    for column, per_split in counts.items():
        id_map = id_maps[column]
        by_id = [0] * (max(id_map.values(), default=FIRST_ID - 1) + 1)
        for value, n in per_split[0].items():
            by_id[id_map.get(value, OTHER_ID)] += n
        found[column] = by_id
    return found


def _statistics(plan: Plan, sequences: pa.Table, fitted_on_all: bool) -> dict:
    """Mean and standard deviation of each real column, over the training split's items (or all)."""
    statistics = {}
    for column in plan.columns.real():
        prefix, length = (f"{column}.all", "length") if fitted_on_all else (column, "training_length")
        mean, std = encoding.combine_moments(
            sequences.column(length).to_numpy(),
            *(sequences.column(f"{prefix}.{name}").to_numpy() for name in ("mean", "m2", "exp")),
        )
        statistics[column] = {"mean": mean, "std": std}
    return statistics


def _check_sequences_unique(plan: Plan, sequences: pa.Table, part_sizes: list) -> None:
    """With one part per file, a sequence must not continue in another file."""
    ids = sequences.column(SEQUENCE).to_numpy(zero_copy_only=False)
    _, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if np.any(counts > 1):
        repeated = ids[first[np.argmax(counts > 1)]]
        repeated = repeated.item() if isinstance(repeated, np.generic) else repeated
        owners = np.repeat(np.arange(len(part_sizes)), part_sizes)[ids == repeated]
        names = ", ".join(str(plan.files[i]) for i in owners)
        raise DataError(
            f"sequence {repeated!r} appears in several files ({names}); with process_by_file every "
            "sequence must lie in one file (or set process_by_file: false)"
        )


def reduce(plan: Plan, metadata_path: Path, input_hash: str | None = None) -> Metadata:
    """Merge the scans into id maps and statistics; write the metadata (hashing the input unless
    its hash is given)."""
    config = plan.config
    scans = [read_json(plan.scan_path(p)) for p in range(plan.n_parts)]
    sequences = pa.concat_tables(pq.read_table(plan.sequences_path(p)) for p in range(plan.n_parts))
    n_rows = sum(s["rows"] for s in scans)
    if n_rows == 0:
        raise DataError(f"{plan.root / config['data_path']}: the table has no rows")
    if config["process_by_file"]:
        _check_sequences_unique(plan, sequences, [s["sequences"] for s in scans])
    names = split_names(len(config["split_ratios"]))
    n_items = np.sum([s["items"] for s in scans], axis=0).tolist()
    if n_items[0] == 0:
        raise DataError(
            f"{plan.root / config['data_path']}: the training split holds no items (split_ratios "
            f"{config['split_ratios']}, {config['split_method']}); the encoding is fitted on it"
        )
    counts = {
        c: [encoding.merge_counts(s["values"][c][k] for s in scans) for k in range(len(names))]
        for c in plan.columns.categorical()
    }
    id_maps = _id_maps(plan, counts)
    metadata = Metadata(
        sequifier_version=__version__,
        data_path=config["data_path"],
        input_hash=input_hash or content_hash(list(plan.files)),
        columns=list(plan.columns.features),
        column_types=dict(plan.columns.kinds),
        column_dtypes={c: str(plan.columns.schema.field(c).type) for c in plan.columns.features},
        categorical_columns=plan.columns.categorical(),
        real_columns=plan.columns.real(),
        id_maps={c: id_map_to_json(m) for c, m in id_maps.items()},
        n_classes={c: max(m.values(), default=FIRST_ID - 1) + 1 for c, m in id_maps.items()},
        selected_columns_statistics=_statistics(plan, sequences, config["fit_on_all_splits"]),
        normalize_real_columns=config["normalize_real_columns"],
        fit_on_all_splits=config["fit_on_all_splits"],
        training_class_counts=_training_counts(counts, id_maps),
        training_statistics=_statistics(plan, sequences, False),
        other_values=_other_values(plan, counts, id_maps, names),
        seq_length=config["seq_length"],
        split_method=config["split_method"],
        split_ratios=config["split_ratios"],
        split_names=names,
        split_paths=[os.path.relpath(plan.split_path(k), plan.root) for k in range(len(names))],
        write_format=config["write_format"],
        merge_output=plan.merged,
        n_rows=n_rows,
        n_sequences=sum(s["sequences"] for s in scans),
        n_items=dict(zip(names, n_items)),
        n_windows=dict(zip(names, np.sum([s["windows"] for s in scans], axis=0).tolist())),
        preprocess_config=recorded_config(config),
        n_irregular_sequences=sum(s["irregular"] for s in scans),
    ).fingerprinted()
    encoding.check_real_values(plan.root / config["data_path"], metadata, sequences)
    if metadata.n_irregular_sequences:
        logger.info(
            "%s of %s sequences have itemPositions with uneven steps; predictions carry their items' own "
            "itemPositions, generated items continue by the step between a window's last two items",
            f"{metadata.n_irregular_sequences:,}", f"{metadata.n_sequences:,}",
        )  # fmt: skip
    metadata.save(metadata_path)
    return metadata


# --- windows and merge ---------------------------------------------------------------------


@dataclass
class EncodedPart:
    """A sorted part with its columns encoded side by side, ready to be cut into windows."""

    ids: pa.Array  # per sequence
    positions: np.ndarray
    starts: np.ndarray
    matrix: np.ndarray  # see window_files.value_matrix
    bounds: np.ndarray  # split bounds per sequence


def encode_part(plan: Plan, metadata: Metadata, part: Part) -> EncodedPart:
    encoder = encoding.ColumnEncoder(metadata)
    encoded = {c: encoder.encode(c, part.table.column(c))[0] for c in plan.columns.features}
    return EncodedPart(
        ids=part.sequence_ids(),
        positions=part.table.column(POSITION).to_numpy(),
        starts=part.starts,
        matrix=value_matrix(encoded, value_type(metadata)),
        bounds=part_bounds(plan, part),
    )


def split_tables(plan: Plan, part: EncodedPart, k: int):
    """The window tables of split k of a part, in chunks (at least one table, maybe empty)."""
    seq_length, names = plan.config["seq_length"], list(plan.columns.features)
    split = windows_of_split(
        part.bounds, k, seq_length, plan.strides[k], plan.config["subsequence_start_mode"]
    )
    for i in range(0, max(len(split), 1), WINDOWS_PER_CHUNK):
        chunk = split.slice(i, i + WINDOWS_PER_CHUNK)
        yield window_table(part.ids, part.positions, part.starts, part.matrix, names, chunk, seq_length)


def windows(plan: Plan, metadata: Metadata, p: int) -> None:
    """Encode a part and cut it into the windows of every split (Arrow IPC, one file per split)."""
    part = encode_part(plan, metadata, load_sorted_part(plan, p))
    with atomic_path(plan.windows_path(p)) as tmp:
        tmp.mkdir()
        for k in range(len(plan.strides)):
            write_ipc(tmp / f"split{k}.arrow", split_tables(plan, part, k))


def write_split(plan: Plan, metadata: Metadata, tables, target: Path) -> None:
    """Write the window tables of one split as its output file or folder of shards."""
    with atomic_path(target) as tmp:
        write_windows(
            tmp,
            prefetched(tables),
            plan.config["write_format"],
            plan.merged,
            metadata,
            plan.config["batches_per_file"],
        )


def merge(plan: Plan, metadata: Metadata, k: int, target: Path) -> None:
    """Concatenate split k of every part, in order, into its output file or folder of shards."""
    tables = (t for p in range(plan.n_parts) for t in read_ipc(plan.windows_path(p) / f"split{k}.arrow"))
    write_split(plan, metadata, tables, target)
