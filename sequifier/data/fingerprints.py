"""Window files tied to the metadata they were written with.

The metadata's `fingerprint` (a hash of its content) is stored in every window file: parquet in
the file's key-value metadata, pt as a key of the shard, csv as one more column
(`metadataFingerprint`, the same value in every row: plain CSV that any reader takes, and rows
copied between files keep it). Reading checks it against the metadata the windows are read with.
"""

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sequifier.data.columns import FINGERPRINT
from sequifier.errors import DataError

PARQUET_KEY = b"sequifier.fingerprint"
PT_KEY = "fingerprint"
FORMATS = ("parquet", "csv", "pt")


def parquet_fingerprint(handle: pq.ParquetFile) -> str | None:
    found = (handle.metadata.metadata or {}).get(PARQUET_KEY)
    return found.decode() if found is not None else None


def csv_fingerprints(table: pa.Table) -> set:
    """The fingerprints a csv table's rows carry (empty without the column)."""
    if FINGERPRINT not in table.column_names:
        return set()
    return set(table.column(FINGERPRINT).unique().to_pylist())


def check(source, file: Path, found) -> None:
    """Refuse windows of `file` whose fingerprint `found` (a str, a set of them or None) is not the
    one of the metadata they are read with (`source`: a WindowSource)."""
    if source.fingerprint is None:
        return
    if not found:
        raise DataError(
            f"{file}: the windows carry no fingerprint of the metadata they were written with; they were "
            "written by an earlier version of sequifier: run `sequifier preprocess` again"
        )
    if found == source.fingerprint or found == {source.fingerprint}:
        return
    shown = found if isinstance(found, str) else ", ".join(sorted(map(str, found)))
    raise DataError(
        f"{file}: the windows were written with metadata of fingerprint {shown}, but they are read with "
        f"{source.metadata_name} (fingerprint {source.fingerprint}): they belong to another preprocess run "
        f"(another input, or preprocessed again since); {source.remedy}"
    )


def stored_fingerprint(path: Path) -> str | None:
    """The fingerprint of the windows at `path` (a file or a folder of shards); None when there is
    none to read (not a window file, or one of an earlier version)."""
    files = sorted(p for p in path.iterdir() if p.suffix[1:] in FORMATS) if path.is_dir() else [path]
    if not files:
        return None
    file = files[0]
    try:
        if file.suffix == ".parquet":
            return parquet_fingerprint(pq.ParquetFile(file))
        if file.suffix == ".csv":
            convert = pacsv.ConvertOptions(
                include_columns=[FINGERPRINT], column_types={FINGERPRINT: pa.string()}
            )
            batch = next(iter(pacsv.open_csv(file, convert_options=convert)), None)
            found = csv_fingerprints(pa.Table.from_batches([batch])) if batch is not None else set()
            return next(iter(found), None)
        if file.suffix == ".pt":
            import torch

            shard = torch.load(file, weights_only=True)
            return shard.get(PT_KEY) if isinstance(shard, dict) else None
    except (pa.ArrowInvalid, OSError, RuntimeError, StopIteration):
        return None
    return None
