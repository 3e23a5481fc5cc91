"""Nothing moee did not write is deleted or replaced: an output is never an input (or a folder holding one),
one run per output at a time, and ``--id-field`` values are unique unless the user says otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moee_plugins.cli import main
from moee_plugins.commands import embed as embed_command
from moee_plugins.io import CorpusError, count_records, read_vectors
from moee_plugins.io.ownership import OutputBusy, OutputLock, lock_path_for

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = ["The hockey team won the game.", "Printers and graphics cards.", "", "The shuttle reached orbit.",
        "A doctor treats the disease."]


@pytest.fixture
def no_model(monkeypatch):
    """Every refusal here comes before a model would load."""
    def refuse(args):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(embed_command, "build_embedder", refuse)


def embed(*args: object) -> int:
    return main(["embed", *map(str, args), "--device", "cpu", "-q"])


def _parquet_corpus(path: Path) -> bytes:
    import pandas as pd

    pd.DataFrame({"text": DOCS}).to_parquet(path)
    return path.read_bytes()


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_an_output_that_is_the_input_is_refused(tmp_path, no_model, capsys, overwrite):
    corpus = tmp_path / "data.parquet"
    before = _parquet_corpus(corpus)
    assert embed(corpus, "-o", corpus, *overwrite) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the input" in err
    assert corpus.read_bytes() == before


def test_a_file_written_beside_the_output_that_is_the_input_is_refused(tmp_path, no_model, capsys):
    corpus = tmp_path / "v.npy.ids.jsonl"  # the .npy output's id sidecar
    corpus.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS)), encoding="utf-8")
    before = corpus.read_bytes()
    assert embed(corpus, "-o", tmp_path / "v.npy", "--id-field", "id", "--overwrite") == 2
    assert "is the input" in capsys.readouterr().err and corpus.read_bytes() == before


def test_a_second_run_on_a_locked_output_refuses_with_one_line(tmp_path, no_model, capsys):
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    out = tmp_path / "v.npy"
    with OutputLock(out):  # another run holds the output
        assert embed(corpus, "-o", out, "--resume") == 2
        err = capsys.readouterr().err
        with pytest.raises(OutputBusy):
            OutputLock(out).acquire()
    assert err.count("\n") == 1 and "is being written by another moee run (pid" in err
    assert not lock_path_for(out).exists()  # released and removed


def test_the_lock_of_a_dead_run_does_not_block(tmp_path, tiny_alias, fast):
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    out = tmp_path / "v.npy"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_path_for(out).write_text(dead.stdout.strip())  # left behind by a killed run: no process holds it
    assert embed(corpus, "-o", out, "--model", tiny_alias) == 0
    assert np.load(out).shape[0] == len(DOCS) and not lock_path_for(out).exists()


def test_duplicate_ids_are_refused_naming_the_first_and_its_rows(tmp_path, tiny_alias, fast, capsys):
    corpus = tmp_path / "docs.jsonl"
    keys = ["a", "b", "c", "b", "a"]  # 'b' is the first id seen twice (row 3)
    corpus.write_text("".join(json.dumps({"key": k, "text": d}) + "\n" for k, d in zip(keys, DOCS, strict=True)),
                      encoding="utf-8")
    out = tmp_path / "v.parquet"
    assert embed(corpus, "-o", out, "--id-field", "key") == 2
    err = capsys.readouterr().err
    assert "id 'b' is used by 2 documents (rows 1, 3)" in err and "--allow-duplicate-ids" in err
    assert not out.exists()
    assert embed(corpus, "-o", out, "--id-field", "key", "--model", tiny_alias, "--allow-duplicate-ids") == 0
    assert read_vectors(out)[0].tolist() == keys


def test_duplicate_ids_are_refused_before_a_ray_cluster_starts(tmp_path, capsys):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"key": k, "text": "x"}) + "\n" for k in ["p", "q", "p"]), encoding="utf-8")
    assert embed(corpus, "-o", tmp_path / "vectors", "--engine", "ray", "--id-field", "key") == 2
    assert "id 'p' is used by 2 documents (rows 0, 2)" in capsys.readouterr().err
    assert not (tmp_path / "vectors").exists()


def test_count_records_finds_duplicate_integer_ids_and_accepts_unique_ones(tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"n": n, "text": "x"}) + "\n" for n in [7, 8, 9, 10, 8, 7]), encoding="utf-8")
    with pytest.raises(CorpusError, match=r"id 8 is used by 2 documents \(rows 1, 4\)") as caught:
        count_records(corpus, id_field="n", unique_ids=True)
    assert caught.value.kind == "duplicate"
    assert count_records(corpus, id_field="n") == (6, "int")  # unique_ids not asked: accepted
    corpus.write_text("".join(json.dumps({"n": n, "text": "x"}) + "\n" for n in range(50)), encoding="utf-8")
    assert count_records(corpus, id_field="n", unique_ids=True) == (50, "int")


def _topics(*args: object) -> int:
    return main(["topics", *map(str, args), "--device", "cpu", "-q"])


def test_topics_refuses_to_replace_an_earlier_run_without_overwrite(tmp_path, capsys):
    outdir = tmp_path / "out"
    outdir.mkdir()
    (outdir / "topics.csv").write_text("mine")
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(DOCS * 4) + "\n", encoding="utf-8")
    assert _topics(corpus, "-o", outdir) == 2
    err = capsys.readouterr().err
    assert "already holds topics.csv: pass --overwrite" in err and (outdir / "topics.csv").read_text() == "mine"


def test_topics_never_writes_over_its_input(tmp_path, capsys):
    import pandas as pd

    outdir = tmp_path / "out"
    outdir.mkdir()
    corpus = outdir / "topics.csv"  # a corpus bearing the name of a file topics writes, in OUTDIR
    pd.DataFrame({"text": DOCS * 4}).to_csv(corpus, index=False)
    before = corpus.read_bytes()
    assert _topics(corpus, "-o", outdir, "--overwrite") == 2
    assert "is the input" in capsys.readouterr().err and corpus.read_bytes() == before
