"""Reading a user's corpus from disk, streamed: txt (a document a line), jsonl, csv and parquet.

Rules (the same for every caller, documented in docs/cli.md):

* ``.txt``: one document a line. Lines end at ``\\n`` or ``\\r\\n`` only; a lone ``\\r`` (or any other Unicode
  line separator) stays inside its line, so row ``i`` is always line ``i + 1``. Empty lines are (empty)
  documents and keep their row.
* ``.jsonl``: one JSON object a line; blank lines are skipped; the text field must hold a string.
* ``.csv``: a header row, then one document a row; every cell is text (an empty cell is an empty document);
  a row shorter than the header is an error.
* ``.parquet``: the text column must be a string column; a null in it is an error.
* A UTF-8 byte-order mark at the start of a txt, jsonl or csv file is dropped.

Every problem is a :class:`CorpusError` naming the file, the line or row, and what was found; it never
names a command-line flag (the CLI adds its own advice).
"""

from __future__ import annotations

import array
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = (".txt", ".jsonl", ".csv", ".parquet")
BOM = "\ufeff"
_PARQUET_BATCH = 4096


class CorpusError(ValueError):
    """The corpus file cannot be read as asked. ``kind`` says what went wrong, for callers that advise.

    kinds: ``missing`` (no such file), ``format`` (unknown suffix), ``field`` (no such field/column),
    ``value`` (a record whose text or id is not usable), ``syntax`` (invalid JSON / undecodable bytes),
    ``duplicate`` (an id that more than one document has).
    """

    def __init__(self, message: str, *, kind: str, field: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.field = field


@dataclass(frozen=True)
class Record:
    """One document: its text and, when an id field is read, its id (an ``int`` or a ``str``)."""

    text: str
    id: int | str | None = None


def corpus_format(path: str | Path) -> str:
    """The suffix (``.txt``, ...) of a corpus file, or a :class:`CorpusError` naming the supported ones."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise CorpusError(f"unsupported corpus format {suffix or 'without a suffix'!r} for {path}; "
                          f"use one of {', '.join(FORMATS)}", kind="format")
    return suffix


def field_for(path: str | Path, text_field: str = "text", text_column: str | None = None) -> str | None:
    """The field/column the text is read from (``None`` for txt)."""
    suffix = corpus_format(path)
    if suffix == ".txt":
        return None
    return text_field if suffix == ".jsonl" else text_column or text_field


def iter_records(path: str | Path, *, text_field: str = "text", text_column: str | None = None,
                 id_field: str | None = None) -> Iterator[Record]:
    """The documents of ``path`` in file order, one at a time (memory does not grow with the corpus).

    ``text_field`` names the field of a jsonl record; ``text_column`` the column of a csv/parquet table
    (default: ``text_field``); ``id_field`` a field/column whose values become :attr:`Record.id`.
    """
    path = Path(path)
    suffix = corpus_format(path)
    if not path.is_file():
        raise CorpusError(f"no such corpus file: {path}", kind="missing")
    column = field_for(path, text_field, text_column)
    if suffix == ".txt":
        if id_field is not None:
            raise CorpusError(f"{path}: a .txt corpus has no fields, so no id field {id_field!r}; ids are the "
                              "line numbers - 1", kind="field", field=id_field)
        return _txt(path)
    if suffix == ".jsonl":
        return _jsonl(path, column, id_field)
    if suffix == ".csv":
        return _csv(path, column, id_field)
    return _parquet(path, column, id_field)


def iter_corpus(path: str | Path, *, text_field: str = "text", text_column: str | None = None) -> Iterator[str]:
    """The texts of :func:`iter_records`."""
    for record in iter_records(path, text_field=text_field, text_column=text_column):
        yield record.text


def read_corpus(path: str | Path, *, text_field: str = "text", text_column: str | None = None) -> list[str]:
    """Every document of ``path`` in file order, as a list (for corpora that fit in memory)."""
    return list(iter_corpus(path, text_field=text_field, text_column=text_column))


# ---------------------------------------------------------------------------------------------- formats
def _txt(path: Path) -> Iterator[Record]:
    # binary lines split on b"\n" only: "\r\n" loses its "\r" below, a lone "\r" stays in the text
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.endswith(b"\n"):
                raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            yield Record(_decode(raw, path, number, first=number == 1))


def split_txt(data: bytes, where: str = "<text>") -> list[str]:
    """The documents of a whole .txt file's bytes, by the rules of :func:`iter_records` (for readers that get
    a file at once, such as the Ray file job)."""
    if not data:
        return []
    lines = data.split(b"\n")
    if lines[-1] == b"":  # the newline that ends the last line
        lines.pop()
    texts = []
    for number, raw in enumerate(lines, start=1):
        texts.append(_decode(raw[:-1] if raw.endswith(b"\r") else raw, Path(where), number, first=number == 1))
    return texts


def _decode(raw: bytes, path: Path, number: int, *, first: bool) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}:{number}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line)",
                          kind="syntax") from None
    return text.removeprefix(BOM) if first else text


def _jsonl(path: Path, column: str, id_field: str | None) -> Iterator[Record]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = _decode(raw, path, number, first=number == 1)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno} of the line)",
                                  kind="syntax") from None
            if not isinstance(record, dict):
                raise CorpusError(f"{path}:{number}: a jsonl record must be a JSON object, got "
                                  f"{type(record).__name__}", kind="value")
            if column not in record:
                raise CorpusError(f"{path}:{number}: record has no field {column!r}; its fields: "
                                  f"{_names(record)}", kind="field", field=column)
            text = record[column]
            if not isinstance(text, str):
                raise CorpusError(f"{path}:{number}: field {column!r} is {_kind(text)}, not a string", kind="value")
            yield Record(text, _id(record, id_field, f"{path}:{number}") if id_field else None)


def _id(record: dict[str, Any], id_field: str, where: str) -> int | str:
    if id_field not in record:
        raise CorpusError(f"{where}: record has no id field {id_field!r}; its fields: {_names(record)}",
                          kind="field", field=id_field)
    value = record[id_field]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise CorpusError(f"{where}: id field {id_field!r} is {_kind(value)}; ids must be integers or strings",
                          kind="value")
    return value


def _csv(path: Path, column: str, id_field: str | None) -> Iterator[Record]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        names = reader.fieldnames
        for name in (column, id_field):
            if name is not None and (names is None or name not in names):
                raise CorpusError(f"{path}: no column {name!r}; columns: {names or []}", kind="field", field=name)
        try:
            for row in reader:
                text = row[column]
                if text is None:  # the row has fewer cells than the header
                    raise CorpusError(f"{path}: row {reader.line_num - 1} (line {reader.line_num}) has no cell for "
                                      f"column {column!r}: it is shorter than the header", kind="value")
                yield Record(text, _csv_id(row, id_field, path, reader.line_num) if id_field else None)
        except csv.Error as exc:
            raise CorpusError(f"{path}:{reader.line_num}: invalid CSV ({exc})", kind="syntax") from None
        except UnicodeDecodeError as exc:
            raise CorpusError(f"{path}: not UTF-8 text ({exc.reason})", kind="syntax") from None


def _csv_id(row: dict[str, str | None], id_field: str, path: Path, line: int) -> str:
    value = row[id_field]
    if value is None:
        raise CorpusError(f"{path}: row {line - 1} (line {line}) has no cell for id column {id_field!r}",
                          kind="value")
    return value


def _parquet(path: Path, column: str, id_field: str | None) -> Iterator[Record]:
    from .._extras import require

    pa = require("pyarrow", "cli", feature="reading parquet")
    pq = require("pyarrow.parquet", "cli", feature="reading parquet")
    source = pq.ParquetFile(path)
    schema = source.schema_arrow
    for name in (column, id_field):
        if name is not None and name not in schema.names:
            raise CorpusError(f"{path}: no column {name!r}; columns: {schema.names}", kind="field", field=name)
    text_type = schema.field(column).type
    if not _is_text(pa, text_type):
        raise CorpusError(f"{path}: column {column!r} holds {text_type}, not strings", kind="value")
    if id_field is not None:
        id_type = schema.field(id_field).type
        if not (pa.types.is_integer(id_type) or _is_text(pa, id_type)):
            raise CorpusError(f"{path}: id column {id_field!r} holds {id_type}; ids must be integers or strings",
                              kind="value")
    names = [column] + ([id_field] if id_field is not None and id_field != column else [])
    row = 0
    for batch in source.iter_batches(batch_size=_PARQUET_BATCH, columns=names):
        texts = batch.column(column).to_pylist()
        ids = batch.column(id_field).to_pylist() if id_field is not None else [None] * len(texts)
        for text, key in zip(texts, ids, strict=True):
            if text is None:
                raise CorpusError(f"{path}: row {row} has a null in column {column!r}; fill or drop it first "
                                  "(an empty document is the string \"\")", kind="value")
            if id_field is not None and key is None:
                raise CorpusError(f"{path}: row {row} has a null in id column {id_field!r}", kind="value")
            yield Record(text, key)
            row += 1


def _is_text(pa: Any, kind: Any) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind)
                or getattr(pa.types, "is_string_view", lambda _: False)(kind))


def _names(record: dict[str, Any]) -> str:
    names = list(record)
    return ", ".join(map(repr, names[:20])) + (" ..." if len(names) > 20 else "") if names else "none"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def count_records(path: str | Path, *, unique_ids: bool = False, **options: Any) -> tuple[int, str | None]:
    """(documents, id kind) after reading every record once, so every problem shows before a model loads.

    The id kind is ``"int"`` or ``"str"`` when ``id_field`` is given (mixing both is an error), else ``None``.
    With ``unique_ids`` an id that repeats is a :class:`CorpusError` (kind ``duplicate``) naming the first
    repeated id and its documents: ids would no longer say which row is which. Ids are held as 8-byte hashes
    (8 bytes a document); a second pass confirms a repeat and finds its rows.
    """
    count, kind = 0, None
    hashes = array.array("q")
    for record in iter_records(path, **options):
        if record.id is not None:
            this = "int" if isinstance(record.id, int) else "str"
            if kind is not None and this != kind:
                raise CorpusError(f"{path}: document {count} has a {this} id where earlier ones are {kind}s; "
                                  "ids must be all integers or all strings", kind="value")
            kind = this
            if unique_ids:
                hashes.append(hash(record.id))
        count += 1
    if unique_ids and kind is not None:
        _refuse_duplicate_ids(path, hashes, options)
    return count, kind


def _refuse_duplicate_ids(path: str | Path, hashes: array.array, options: dict[str, Any]) -> None:
    """Raise naming the first id (in row order) that an earlier document already has, and its documents."""
    import numpy as np

    values = np.frombuffer(hashes, dtype=np.int64) if len(hashes) else np.zeros(0, dtype=np.int64)
    unique, counts = np.unique(values, return_counts=True)
    repeated = set(unique[counts > 1].tolist())
    if not repeated:
        return
    rows: dict[int | str, list[int]] = {}
    first: int | str | None = None
    for row, record in enumerate(iter_records(path, **options)):
        if hash(record.id) not in repeated:
            continue
        rows.setdefault(record.id, []).append(row)
        if first is None and len(rows[record.id]) > 1:
            first = record.id
    if first is None:  # only hashes collided
        return
    where = rows[first]
    shown = ", ".join(map(str, where[:10])) + (" ..." if len(where) > 10 else "")
    raise CorpusError(f"{path}: id {first!r} is used by {len(where)} documents (rows {shown}), the first repeated id; "
                      "ids must be unique", kind="duplicate", field=options.get("id_field"))


__all__ = ["BOM", "FORMATS", "CorpusError", "Record", "corpus_format", "count_records", "field_for",
           "iter_corpus", "iter_records", "read_corpus", "split_txt"]
