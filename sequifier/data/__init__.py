"""The data contract every stage shares: column names and reserved ids (`columns`), the metadata
file (`metadata`), window index arithmetic (`windows`), the window files, written and read
(`window_files`), and streams of tables (`streams`)."""
