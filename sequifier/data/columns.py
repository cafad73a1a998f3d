"""The names every stage shares: the key columns of the input table, of the window files and of
the outputs, and the ids reserved in every categorical column's encoding.

Ids 0 (padding, and unknown), 1 (other: a value not in the id map) and 2 (mask) are reserved;
ordinary values get ids from 3 up.
"""

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
