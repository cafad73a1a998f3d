"""The names every stage shares: the key columns of the input table, of the window files and of
the outputs, and the ids reserved in every categorical column's encoding.

Ids 0 (padding, and unknown), 1 (other: a value not in the id map) and 2 (mask) are reserved;
ordinary values get ids from 3 up.
"""

import re

SEQUENCE = "sequenceId"  # input, windows and outputs: which sequence a row belongs to
POSITION = "itemPosition"  # input and outputs: the item's place in its sequence
SUBSEQUENCE = "subsequenceId"  # windows and embeddings: the window's index in its sequence and split
START = "startItemPosition"  # windows: the itemPosition of the window's first slot (see windows.py)
LAST = "lastItemPosition"  # windows: the itemPosition of the window's last item (what it predicts)
STEP = "positionStep"  # windows: the step between the window's last two items (1 for one item)
CONTEXT = "contextSlots"  # windows: leading slots that are padding or items of earlier splits
INPUT_COLUMN = "inputCol"  # windows (wide formats): the feature column a row holds
FINGERPRINT = "metadataFingerprint"  # windows (csv): the fingerprint of the metadata they were written with

PADDING_ID, OTHER_ID, MASK_ID = 0, 1, 2
FIRST_ID = 3  # the first id of an ordinary value

OUTPUT_KEYS = (SEQUENCE, SUBSEQUENCE, POSITION)  # the key columns of the output tables
IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"  # a name kept as it is in an ONNX graph
FILE_NAME = r"\w(?:[\w .-]{0,62}[\w-])?"  # a name kept as it is in a file name (at most 64 characters)


def plain_names(names: list, pattern: str, prefix: str) -> list:
    """Each of `names` where it matches `pattern` (a regex), else `prefix{i}` by its position; all
    by position should that name two alike (ignoring case, as some file systems do). Column names
    are anything a table can hold; this is how they appear where they cannot (file names, ONNX)."""
    plain = [name if re.fullmatch(pattern, name) else f"{prefix}{i}" for i, name in enumerate(names)]
    distinct = len({name.casefold() for name in plain}) == len(plain)
    return plain if distinct else [f"{prefix}{i}" for i in range(len(names))]


def class_column(name: str) -> str:
    """The column a class's probability is written to: its name, unless that is a key column's name
    (sequenceId, subsequenceId, itemPosition) after any leading underscores; such a name gets one
    more leading `_` (class sequenceId -> _sequenceId, _sequenceId -> __sequenceId), so no class
    column is a key column and no two classes share a column."""
    return f"_{name}" if name.lstrip("_") in OUTPUT_KEYS else name
