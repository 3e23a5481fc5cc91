"""Corpus readers (moee_plugins/io/corpus.py): line splitting, BOMs, nulls and non-strings, error locations."""

from __future__ import annotations

import json

import pytest

from moee_plugins.io import CorpusError, count_records, iter_records, read_corpus


def test_txt_lines_end_at_newline_or_crlf_only(tmp_path):
    path = tmp_path / "c.txt"
    # a lone \r, a form feed, a vertical tab and U+2028 stay inside their line; \r\n and \n end a line
    path.write_bytes("one\rstill one\r\ntwo\x0c\x0b\u2028two\n\nfour".encode())
    assert read_corpus(path) == ["one\rstill one", "two\x0c\x0b\u2028two", "", "four"]


def test_txt_row_i_is_line_i_with_a_lone_cr(tmp_path):
    lines = [f"line {i}" + ("\r" if i % 3 == 0 else "") + " end" for i in range(10)]
    path = tmp_path / "c.txt"
    path.write_bytes("\n".join(lines).encode() + b"\n")
    assert read_corpus(path) == lines


def test_a_bom_is_dropped_in_txt_jsonl_and_csv(tmp_path):
    (tmp_path / "c.txt").write_bytes(b"\xef\xbb\xbfhello\nworld\n")
    (tmp_path / "c.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "hello"}\n')
    (tmp_path / "c.csv").write_bytes(b"\xef\xbb\xbftext\nhello\n")
    assert read_corpus(tmp_path / "c.txt") == ["hello", "world"]
    assert read_corpus(tmp_path / "c.jsonl") == ["hello"]
    assert read_corpus(tmp_path / "c.csv") == ["hello"]  # the column is "text", not "\ufefftext"


def test_a_bom_inside_the_file_is_text(tmp_path):
    (tmp_path / "c.txt").write_bytes("a\n\ufeffb\n".encode())
    assert read_corpus(tmp_path / "c.txt") == ["a", "\ufeffb"]


def test_invalid_jsonl_names_the_file_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"c\.jsonl:4: invalid JSON") as info:
        read_corpus(path)
    assert info.value.kind == "syntax"


def test_a_jsonl_record_without_the_field_lists_its_fields(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a"}\n{"body": "b", "id": 3}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: record has no field 'text'; its fields: 'body', 'id'"):
        read_corpus(path)


@pytest.mark.parametrize(("value", "shown"), [(None, "null"), (1, "int 1"), (["a", "b"], "list")])
def test_jsonl_non_string_text_names_the_line(tmp_path, value, shown):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": value}) + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=rf"c\.jsonl:2: field 'text' is {shown}.*not a string"):
        read_corpus(path)


@pytest.mark.parametrize(("column", "message"), [
    ("nulls", r"row 1 has a null in column 'text'"),
    ("numbers", r"column 'text' holds int64, not strings"),
    ("lists", r"column 'text' holds list<.*>, not strings"),
])
def test_parquet_nulls_numbers_and_lists_are_errors(tmp_path, column, message):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    values = {"nulls": ["a", None, "c"], "numbers": [1, 2, 3], "lists": [["a"], ["b", "c"], []]}[column]
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": values}), path)
    with pytest.raises(CorpusError, match=message):
        read_corpus(path)


def test_parquet_strings_and_dictionary_strings_are_read_in_order(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    texts = [f"doc {i}" for i in range(10_000)]  # more than one read batch
    pq.write_table(pa.table({"text": texts, "cat": pa.array(texts).dictionary_encode()}), tmp_path / "c.parquet")
    assert read_corpus(tmp_path / "c.parquet") == texts
    assert read_corpus(tmp_path / "c.parquet", text_column="cat") == texts


def test_csv_cells_are_text_and_a_short_row_is_an_error(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('id,text\n1,"a, quoted\r\nmultiline"\n2,\n3,1.50\n', encoding="utf-8")
    assert read_corpus(path) == ["a, quoted\r\nmultiline", "", "1.50"]  # an empty cell is an empty document
    path.write_text("id,text\n1,a\n2\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"row 2 \(line 3\) has no cell for column 'text'"):
        read_corpus(path)


def test_missing_columns_list_the_columns_without_naming_flags(tmp_path):
    (tmp_path / "c.csv").write_text("body\nx\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"no column 'text'; columns: \['body'\]") as info:
        read_corpus(tmp_path / "c.csv")
    assert "--" not in str(info.value) and info.value.kind == "field" and info.value.field == "text"


def test_ids_from_every_format(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "c.jsonl").write_text('{"k": "x", "text": "a"}\n{"k": "y", "text": "b"}\n', encoding="utf-8")
    (tmp_path / "c.csv").write_text("k,text\n7,a\n8,b\n", encoding="utf-8")
    pq.write_table(pa.table({"k": [10, 20], "text": ["a", "b"]}), tmp_path / "c.parquet")
    assert [r.id for r in iter_records(tmp_path / "c.jsonl", id_field="k")] == ["x", "y"]
    assert [r.id for r in iter_records(tmp_path / "c.csv", id_field="k")] == ["7", "8"]
    assert [r.id for r in iter_records(tmp_path / "c.parquet", id_field="k")] == [10, 20]
    assert count_records(tmp_path / "c.parquet", id_field="k") == (2, "int")
    (tmp_path / "mixed.jsonl").write_text('{"k": 1, "text": "a"}\n{"k": "2", "text": "b"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match="all integers or all strings"):
        count_records(tmp_path / "mixed.jsonl", id_field="k")
    with pytest.raises(CorpusError, match=r"mixed\.jsonl:1: record has no id field 'id'; its fields: 'k', 'text'"):
        count_records(tmp_path / "mixed.jsonl", id_field="id")


def test_reading_streams(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\nnot json\n', encoding="utf-8")
    records = iter_records(path)
    assert next(records).text == "a" and next(records).text == "b"  # read lazily: the bad line is not reached yet
    with pytest.raises(CorpusError, match=":3:"):
        next(records)


def test_ray_shards_are_named_and_rewritten_in_row_order(tmp_path):
    """Ray may write a job's files, and blocks inside one file, out of input order: file-name order is made input order."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from moee_plugins.jobs.ray_files import _name_shards_in_row_order

    def shard(name, ids):
        path = tmp_path / name
        pq.write_table(pa.table({"id": ids, "vector": [[float(i)] for i in ids]}), path)
        return path

    def read_in_name_order():
        files = sorted(tmp_path.glob("*.parquet"))
        return pa.concat_tables(pq.read_table(f) for f in files)

    _name_shards_in_row_order([shard("b.parquet", [0, 1]), shard("a.parquet", [2, 3])], None)  # misnamed files
    assert read_in_name_order().column("id").to_pylist() == [0, 1, 2, 3]
    for path in tmp_path.glob("*.parquet"):
        path.unlink()
    _name_shards_in_row_order([shard("x.parquet", [0, 1, 4, 5, 2, 3])], 4)  # blocks out of order inside a file
    table = read_in_name_order()
    assert table.column("id").to_pylist() == [0, 1, 2, 3, 4, 5]
    assert [v[0] for v in table.column("vector").to_pylist()] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # rows moved whole
    assert len(list(tmp_path.glob("*.parquet"))) == 2  # rewritten at rows_per_file
