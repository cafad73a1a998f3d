"""The metadata file that preprocess writes and train and infer read.

It holds everything data-dependent that later stages need: columns and their types, id maps,
class counts, real-column statistics, the window length, the splits and their paths (relative
to the project root), row and window counts, the preprocess config and a hash of the input.
"""

import hashlib
from pathlib import Path

from sequifier.errors import DataError
from sequifier.files import read_json

FORMAT = "sequifier-metadata/2"
EARLIER_FORMATS = {
    "sequifier-metadata/1": "its windows do not say which items are context from earlier splits, and its "
    "id maps and statistics were fitted on every split",
}
SPLIT_NAMES = {1: ["train"], 2: ["train", "validation"], 3: ["train", "validation", "test"]}
EXECUTION_KEYS = ("n_cores", "n_partitions", "continue_preprocessing", "work_path")


def split_names(n_splits: int) -> list[str]:
    return SPLIT_NAMES.get(n_splits, [f"split{k}" for k in range(n_splits)])


def content_hash(files: list[Path]) -> str:
    """blake2b over the bytes of the input files, in order."""
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return f"blake2b:{digest.hexdigest()}"


def recorded_config(config: dict) -> dict:
    """The preprocess config as recorded: without the keys that change how, not what, is computed."""
    return {k: v for k, v in config.items() if k not in EXECUTION_KEYS}


def load_metadata(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: metadata file not found; run `sequifier preprocess` first")
    try:
        metadata = read_json(path)
    except ValueError as error:
        raise DataError(f"{path}: not a valid metadata file: {error}") from None
    found = metadata.get("format") if isinstance(metadata, dict) else None
    if found in EARLIER_FORMATS:
        raise DataError(
            f"{path}: metadata of format {found}, written by an earlier version of sequifier "
            f"({EARLIER_FORMATS[found]}); run `sequifier preprocess` again"
        )
    if found != FORMAT:
        raise DataError(f"{path}: not a sequifier metadata file (expected format {FORMAT}, found {found!r})")
    return metadata
