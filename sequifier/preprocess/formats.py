"""What an input file's bytes say about reading it: the format it really has, its text encoding,
which CSV cells are missing, and what a read error means for the user."""

import re
from pathlib import Path

import pyarrow.csv as pacsv

from sequifier.data.columns import SEQUENCE
from sequifier.errors import DataError

NULL_SPELLING = re.compile(r"invalid value '([^']*(NA|N/A|NaN|nan|null|NULL)[^']*)?'")


def csv_convert(**options) -> pacsv.ConvertOptions:
    """How CSV cells are read, in every column alike: an empty cell or one of pyarrow's null
    spellings (NA, null, NaN, ...) is missing, unless quoted ("NA" is the text NA)."""
    return pacsv.ConvertOptions(strings_can_be_null=True, quoted_strings_can_be_null=False, **options)


def check_format(path: Path, fmt: str) -> None:
    """A Parquet file read as csv, or the other way round, is refused by its first bytes."""
    with open(path, "rb") as handle:
        parquet = handle.read(4) == b"PAR1"
    if parquet != (fmt == "parquet"):
        actual = "a Parquet file" if parquet else "not a Parquet file (it does not begin with PAR1)"
        raise DataError(
            f"{path}: is {actual}, but is read as {fmt}; set read_format to "
            f"{'parquet' if parquet else 'csv'} (or to null, so that the file's extension decides)"
        )


def not_utf8(path: Path, column: str | None = None) -> DataError:
    where = f"column '{column}' of {path}" if column else str(path)
    return DataError(
        f"{where} is not UTF-8 text (its bytes are another encoding, such as latin-1 or cp1252); "
        "CSV files are read as UTF-8: save the file as UTF-8, e.g. "
        f"`iconv -f latin1 -t utf-8 {path.name}` or pandas' to_csv(..., encoding='utf-8')"
    )


def read_error(path: Path, fmt: str, error: Exception) -> DataError:
    """The DataError for an error of pyarrow reading `path` after its types were resolved."""
    text = str(error).strip()
    if "invalid UTF8" in text:
        return not_utf8(path)
    if "conversion error" not in text:
        return DataError(f"{path}: cannot be read as {fmt}: {text.splitlines()[0]}")
    column = _csv_column(path, text)
    if column == SEQUENCE:
        hint = (
            f" (column {SEQUENCE}); the type of {SEQUENCE} comes from the first rows of the first file "
            f"(column_types does not apply to it), and every {SEQUENCE} must be of that type: write them "
            "all as integers, or all as text (e.g. with a letter: s1, s2, ...)"
        )
    else:
        hint = (
            f"{'' if column is None else f' (column {column!r})'}; a column's type comes from "
            "column_types, else from the first rows of the first file: fix the value, or set (or "
            "change) column_types for this column"
        )
    if NULL_SPELLING.search(text):
        hint += '; a quoted "" or "NA" is text, not a number: fill the cell, or leave it unquoted if missing'
    return DataError(f"{path}: cannot be read as {fmt}: {text.splitlines()[0]}{hint}")


def _csv_column(path: Path, text: str) -> str | None:
    """The name of the CSV column whose index an error gives, or None."""
    match = re.search(r"CSV column #(\d+)", text)
    if not match:
        return None
    try:
        with pacsv.open_csv(path) as reader:
            names = reader.schema.names
    except Exception:  # the message is complete without the name
        return None
    index = int(match.group(1))
    return names[index] if index < len(names) else None
