"""Reading a user's corpus from disk: txt (a document a line), jsonl, csv and parquet."""

from __future__ import annotations

import csv
import json
from pathlib import Path

FORMATS = (".txt", ".jsonl", ".csv", ".parquet")


def read_corpus(path: str | Path, *, text_field: str = "text", text_column: str | None = None) -> list[str]:
    """The documents of ``path`` in file order; every row is kept (empty lines become empty strings).

    ``text_field`` names the field of a jsonl record; ``text_column`` the column of a csv/parquet
    table (default: ``text_field``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    column = text_column or text_field
    if not path.is_file():
        raise FileNotFoundError(f"no such corpus file: {path}")
    if suffix == ".txt":
        with path.open(encoding="utf-8") as handle:
            return [line.rstrip("\n").rstrip("\r") for line in handle]
    if suffix == ".jsonl":
        texts = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if not isinstance(record, dict) or column not in record:
                    raise ValueError(f"{path}:{number}: record has no field {column!r} (use --text-field)")
                if not isinstance(record[column], str):
                    raise TypeError(f"{path}:{number}: field {column!r} is {type(record[column]).__name__}, not a string")
                texts.append(record[column])
        return texts
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or column not in reader.fieldnames:
                raise ValueError(f"{path}: no column {column!r}; columns: {reader.fieldnames} (use --text-column)")
            return [row[column] or "" for row in reader]
    if suffix == ".parquet":
        from .._extras import require

        pq = require("pyarrow.parquet", "cli", feature="reading parquet")
        table = pq.read_table(path)
        if column not in table.column_names:
            raise ValueError(f"{path}: no column {column!r}; columns: {table.column_names} (use --text-column)")
        return ["" if value is None else str(value) for value in table.column(column).to_pylist()]
    raise ValueError(f"unsupported corpus format {suffix!r} for {path}; use one of {FORMATS}")
