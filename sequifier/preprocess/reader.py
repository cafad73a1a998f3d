"""The input table: finding its files, resolving column types, reading validated batches."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sequifier.data.columns import POSITION, SEQUENCE
from sequifier.errors import DataError
from sequifier.preprocess.formats import check_format, csv_convert, not_utf8, read_error

SOURCE_FILE = "__source_file__"
SOURCE_ROW = "__source_row__"
RESERVED = (SOURCE_FILE, SOURCE_ROW)
EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
CSV_INFERENCE_BYTES = 4 << 20  # the first block of the first file fixes the column types
CSV_BLOCK_BYTES = 1 << 20  # the streaming CSV reader reads ahead many blocks: keep them small
CSV_WHOLE_BYTES = 64 << 20  # smaller files are parsed at once, on all threads
BATCH_ROWS = 1 << 20  # rows per table handed on, whatever the blocks
FLOAT_EXACT_INTEGERS = 1 << 53


@dataclass(frozen=True)
class Columns:
    """What is read from every input file: column names, types and their meaning."""

    features: tuple[str, ...]
    kinds: dict  # feature -> "categorical" | "real"
    schema: pa.Schema  # sequenceId, itemPosition, features, as kept
    csv_types: dict  # the types CSV text is parsed as (cast to `schema` afterwards, as Parquet is)

    def categorical(self) -> list[str]:
        return [c for c in self.features if self.kinds[c] == "categorical"]

    def real(self) -> list[str]:
        return [c for c in self.features if self.kinds[c] == "real"]

    def dtype(self, column: str) -> str:
        """How a categorical column's values are kept: int64 or string."""
        return "int64" if pa.types.is_integer(self.schema.field(column).type) else "string"

    def part_schema(self) -> pa.Schema:
        """The schema of a part file: the input columns and where each row came from."""
        return self.schema.append(pa.field(SOURCE_FILE, pa.int32())).append(pa.field(SOURCE_ROW, pa.int64()))


def input_files(data_path: Path, read_format: str | None) -> tuple[list[Path], str]:
    """The files of `data_path` (a file or a folder) and their format."""
    if not data_path.exists():
        raise DataError(f"{data_path}: no such file or folder (data_path)")
    if data_path.is_dir():
        candidates = sorted(p for p in data_path.iterdir() if p.suffix in EXTENSIONS and p.is_file())
        formats = {EXTENSIONS[p.suffix] for p in candidates}
        if read_format is None:
            if len(formats) != 1:
                found = ", ".join(sorted(formats)) or "none"
                raise DataError(
                    f"{data_path}: expected a folder of csv or parquet files (one kind), found: {found}; "
                    "set read_format"
                )
            read_format = formats.pop()
        files = [p for p in candidates if EXTENSIONS[p.suffix] == read_format]
        if not files:
            raise DataError(f"{data_path}: the folder holds no .{read_format} files")
        return files, read_format
    if read_format is None:
        if data_path.suffix not in EXTENSIONS:
            raise DataError(
                f"{data_path}: cannot tell the format from the extension '{data_path.suffix}'; "
                "expected .csv or .parquet, or set read_format"
            )
        read_format = EXTENSIONS[data_path.suffix]
    return [data_path], read_format


def _read_schema(path: Path, fmt: str) -> pa.Schema:
    try:
        check_format(path, fmt)
        if fmt == "parquet":
            return pq.read_schema(path)
        # the types: a quoted null spelling counts as missing here, so that "" or "NA" in a column
        # of numbers leaves it a column of numbers (and is refused when it is read, csv_convert)
        with pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=CSV_INFERENCE_BYTES)) as reader:
            schema = reader.schema
        schema.names  # noqa: B018 -- names that are not UTF-8 fail here, not later
        return schema
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: cannot be read as {fmt}: {_short(error)}") from None


def _short(error: Exception) -> str:
    return str(error).strip().splitlines()[0]


def _feature_type(path: Path, name: str, dtype: pa.DataType, override: str | None):
    """(kind, arrow type the column is kept as) for one feature column."""
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    numeric = pa.types.is_integer(dtype) or pa.types.is_floating(dtype)
    textual = pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
    if pa.types.is_null(dtype):
        raise DataError(f"{path}: column '{name}' has no values")
    if not (numeric or textual or pa.types.is_boolean(dtype)):
        raise DataError(f"{path}: column '{name}' has type {dtype}; expected strings, integers or floats")
    if override == "real":
        return "real", pa.float64()
    if override == "categorical" or not pa.types.is_floating(dtype):
        return "categorical", pa.int64() if pa.types.is_integer(dtype) else pa.string()
    return "real", pa.float64()


def resolve_columns(files: list[Path], fmt: str, selected, column_types) -> Columns:
    """Check the first file's header against the config and fix the types every file is read as."""
    path = files[0]
    schema = _read_schema(path, fmt)
    names = schema.names
    for required in (SEQUENCE, POSITION):
        if required not in names:
            raise DataError(
                f"{path}: missing column '{required}'; the input needs {SEQUENCE}, {POSITION} "
                f"and at least one feature column (found: {', '.join(names)})"
            )
    if fmt == "csv":
        binary = [field.name for field in schema if pa.types.is_binary(field.type)]
        if binary:
            raise not_utf8(path, binary[0])
    if all(pa.types.is_null(t) for t in schema.types):
        raise DataError(f"{path}: the table has no rows (only a header)")
    for name in RESERVED:
        if name in names:
            raise DataError(f"{path}: column name '{name}' is reserved by sequifier; rename it")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{path}: the header names column(s) {repeated} more than once; names must be unique")
    available = [n for n in names if n not in (SEQUENCE, POSITION)]
    if selected is None:
        features = available
    else:
        absent = [c for c in selected if c not in available]
        if absent:
            raise DataError(
                f"{path}: selected_columns names {absent} that the table does not have "
                f"(feature columns: {', '.join(available) or 'none'})"
            )
        features = list(selected)
    if not features:
        raise DataError(f"{path}: no feature column besides {SEQUENCE} and {POSITION}")
    overrides = column_types or {}
    unknown = [c for c in overrides if c not in features]
    if unknown:
        raise DataError(f"column_types names {unknown}, which are not among the feature columns {features}")

    sequence_type = schema.field(SEQUENCE).type
    if pa.types.is_dictionary(sequence_type):
        sequence_type = sequence_type.value_type
    if pa.types.is_integer(sequence_type):
        sequence_type = pa.int64()
    elif pa.types.is_string(sequence_type) or pa.types.is_large_string(sequence_type):
        sequence_type = pa.string()
    else:
        raise DataError(f"{path}: {SEQUENCE} has type {sequence_type}; expected integers or strings")
    position_type = schema.field(POSITION).type
    if not (
        pa.types.is_integer(position_type)
        or pa.types.is_floating(position_type)
        or pa.types.is_string(position_type)
        or pa.types.is_large_string(position_type)
    ):
        raise DataError(f"{path}: {POSITION} has type {position_type}; expected integers")
    fields = [pa.field(SEQUENCE, sequence_type), pa.field(POSITION, pa.int64())]
    kinds, csv_types = {}, {SEQUENCE: sequence_type}
    for name in features:
        source = schema.field(name).type
        kinds[name], dtype = _feature_type(path, name, source, overrides.get(name))
        fields.append(pa.field(name, dtype))
        cast_later = pa.types.is_string(dtype) and (
            pa.types.is_floating(source) or pa.types.is_boolean(source)
        )
        csv_types[name] = source if cast_later else dtype
    return Columns(tuple(features), kinds, pa.schema(fields), csv_types)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _where(path: Path, fmt: str, row: int) -> str:
    return f"{path} line {row + 2}" if fmt == "csv" else f"{path} row {row + 1}"


def _bad_position(path, fmt, row: int, value) -> DataError:
    return DataError(
        f"{_where(path, fmt, row)}: {POSITION} is {value!r}; positions must be integers "
        f"(of at most {FLOAT_EXACT_INTEGERS.bit_length() - 1} bits when written as floats)"
    )


def _check_positions(path, fmt, column: pa.Array, first_row: int) -> pa.Array:
    """Positions as int64; floats must be integral and exact, text must spell integers."""
    if pa.types.is_floating(column.type):
        values = column.to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(
            ~np.isfinite(values) | (values != np.round(values)) | (np.abs(values) >= FLOAT_EXACT_INTEGERS)
        )
        if len(bad):
            raise _bad_position(path, fmt, first_row + int(bad[0]), values[bad[0]].item())
        return pa.array(values.astype(np.int64))
    if not pa.types.is_integer(column.type):
        column = pc.utf8_trim_whitespace(column.cast(pa.string()))
        spelled = pc.match_substring_regex(column, r"^[+-]?\d+$").to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(~spelled)
        if len(bad):
            raise _bad_position(path, fmt, first_row + int(bad[0]), column[int(bad[0])].as_py())
        column = pc.replace_substring_regex(column, r"^\+", "")
    try:
        return column.cast(pa.int64())
    except pa.ArrowInvalid as error:  # beyond int64
        raise DataError(f"{path}: {POSITION} does not fit in 64-bit integers: {_short(error)}") from None


def _validate(path: Path, fmt: str, table: pa.Table, columns: Columns, first_row: int) -> pa.Table:
    for name in table.column_names:
        column = table.column(name)
        if column.null_count:
            nulls = np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False))
            row = first_row + int(nulls[0])
            spelled = "empty, NA, null, NaN or another null spelling" if fmt == "csv" else "null"
            quote = '; a text value spelled like that is kept when quoted ("NA")' if fmt == "csv" else ""
            raise DataError(
                f"{_where(path, fmt, row)}: column '{name}' is missing ({spelled}; "
                f"{_count(len(nulls), 'such row')} in this block); fill or drop these rows{quote}"
            )
    for name in columns.real():
        values = table.column(name).to_numpy()
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            i = int(bad[0])
            sequence = table.column(SEQUENCE)[i].as_py()
            raise DataError(
                f"{_where(path, fmt, first_row + i)}: real column '{name}' is {values[i]} "
                f"(sequenceId {sequence!r}); real values must be finite "
                f"({_count(len(bad), 'such row')} in this block)"
            )
    positions = _check_positions(path, fmt, table.column(POSITION).combine_chunks(), first_row)
    return table.set_column(1, POSITION, positions)


def _raw_batches(path: Path, fmt: str, columns: Columns):
    names = columns.schema.names
    try:
        check_format(path, fmt)
        if fmt == "parquet":
            parquet = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering holds whole row groups
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=names):
                yield pa.Table.from_batches([batch])
        else:
            convert = csv_convert(column_types=columns.csv_types, include_columns=names)
            if path.stat().st_size <= CSV_WHOLE_BYTES:
                yield pacsv.read_csv(path, convert_options=convert)
                return
            read = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES)
            with pacsv.open_csv(path, read_options=read, convert_options=convert) as reader:
                for batch in reader:
                    yield pa.Table.from_batches([batch])
    except (pa.ArrowException, OSError) as error:
        raise read_error(path, fmt, error) from None


def _conform(path: Path, table: pa.Table, columns: Columns) -> pa.Table:
    """Cast a batch to the resolved types, naming the column that does not fit."""
    missing = [n for n in columns.schema.names if n not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} that the first input file has")
    arrays = []
    for field in columns.schema:
        column = table.column(field.name)
        if field.name == POSITION or column.type == field.type:
            arrays.append(column)
            continue
        try:
            arrays.append(column.cast(field.type))
        except pa.ArrowException as error:
            raise DataError(
                f"{path}: column '{field.name}' has type {column.type} where {field.type} was expected "
                f"(from the first input file{'' if field.name == SEQUENCE else ' or column_types'}): "
                f"{_short(error)}"
            ) from None
    return pa.table(arrays, names=columns.schema.names)


def _validated(files: list[Path], fmt: str, columns: Columns, max_rows):
    """(file index, validated table) per block read, with source row numbers attached."""
    remaining = max_rows
    for index, path in enumerate(files):
        row = 0
        for raw in _raw_batches(path, fmt, columns):
            if remaining is not None:
                if remaining <= 0:
                    return
                raw = raw.slice(0, remaining)
                remaining -= raw.num_rows
            table = _validate(path, fmt, _conform(path, raw, columns), columns, row)
            n = table.num_rows
            table = table.append_column(SOURCE_FILE, pa.array(np.full(n, index, dtype=np.int32)))
            table = table.append_column(SOURCE_ROW, pa.array(np.arange(row, row + n, dtype=np.int64)))
            row += n
            yield table


def read_batches(files: list[Path], fmt: str, columns: Columns, max_rows=None):
    """Validated tables of about BATCH_ROWS rows over all files, in file order."""
    pending, count = [], 0
    for table in _validated(files, fmt, columns, max_rows):
        pending.append(table)
        count += table.num_rows
        if count >= BATCH_ROWS:
            yield pa.concat_tables(pending).combine_chunks()
            pending, count = [], 0
    if pending:
        yield pa.concat_tables(pending).combine_chunks()


def describe_row(files: list[Path], fmt: str, file_index: int, row: int) -> str:
    return _where(files[file_index], fmt, row)
