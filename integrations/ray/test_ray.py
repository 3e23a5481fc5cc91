"""moee_plugins.ray on a local 2-CPU Ray cluster with the tiny local model.

The properties: vectors equal single-process ``MoEEmbedder.encode`` (statistics computed once and shipped),
every input row comes back exactly once with its own id, and an actor killed mid-batch is restarted and its
batch retried without losing or duplicating a row. The predictor and argument checks run without a cluster.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moee_plugins import MoEEmbedder, Statistics
from moee_plugins.io.corpus import read_corpus
from moee_plugins.jobs.ray_files import embed_files, read_corpus_dataset
from moee_plugins.ray import MoEEPredictor, predictor_kwargs

TOPICS = ("hockey playoff goalie", "printer driver memory", "orbit rocket launch", "oven flour dough")
TEXTS = [f"{TOPICS[i % 4]} note {i}" + " more words" * (i % 5) for i in range(48)]
ATOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")  # Ray's own internals


def _vectors(table: pa.Table, column: str = "embedding") -> np.ndarray:
    return np.asarray(table.column(column).combine_chunks().flatten(), dtype=np.float32).reshape(table.num_rows, -1)


@pytest.fixture(scope="module")
def reference(tiny_embedder) -> np.ndarray:
    """Single-process vectors of TEXTS: what every Ray run must reproduce."""
    return tiny_embedder.encode(TEXTS, show_progress_bar=False)


# ------------------------------------------------------------------ without a cluster
def test_predictor_keeps_rows_in_every_batch_format(tiny_embedder, reference) -> None:
    predictor = MoEEPredictor(**predictor_kwargs(embedder=tiny_embedder, text_column="body", device="cpu"))
    ids = np.arange(10, 20)
    table = predictor(pa.table({"doc": ids, "body": TEXTS[10:20]}))
    assert table.column_names == ["doc", "body", "embedding"]
    assert table.column("doc").to_pylist() == ids.tolist()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), tiny_embedder.dim)
    np.testing.assert_allclose(_vectors(table), reference[10:20], atol=ATOL)

    frame = predictor(pd.DataFrame({"doc": ids[::-1], "body": TEXTS[10:20][::-1]}))
    np.testing.assert_allclose(np.stack(frame["embedding"]), reference[10:20][::-1], atol=ATOL)
    batch = predictor({"doc": ids, "body": np.array(TEXTS[10:20], dtype=object)})
    assert batch["embedding"].shape == (10, tiny_embedder.dim)
    np.testing.assert_allclose(batch["embedding"], reference[10:20], atol=ATOL)
    assert predictor(pa.table({"body": pa.array([], pa.string())})).num_rows == 0

    with pytest.raises(KeyError, match="no text column 'body'"):
        predictor(pa.table({"text": ["x"]}))
    with pytest.raises(TypeError, match="row 1 of this batch must be a string, got int"):
        predictor({"body": np.array(["ok", 3], dtype=object)})


@pytest.mark.parametrize("batch", [lambda: pa.table({"body": pa.array(["ok", None], pa.string())}),
                                   lambda: pd.DataFrame({"body": pd.Series(["ok", None], dtype=object)}),
                                   lambda: pd.DataFrame({"body": ["ok", None]}),
                                   lambda: {"body": np.array(["ok", None], dtype=object)}],
                         ids=["arrow", "pandas-object", "pandas-str", "numpy"])
def test_a_null_text_is_refused_like_the_corpus_readers_do(tiny_embedder, batch) -> None:
    """A null is never embedded as "" (the local readers refuse it too): the error names the column and the row."""
    predictor = MoEEPredictor(**predictor_kwargs(embedder=tiny_embedder, text_column="body", device="cpu"))
    with pytest.raises(TypeError, match=r"column 'body': row 1 of this batch must be a string, got (None|float)"):
        predictor(batch())


def test_statistics_are_fitted_once_and_shipped(tiny_model_dir, tiny_embedder) -> None:
    """calibrate_on="driver" with user calibration texts: the actors get exactly the statistics a
    single-process ``calibrate(texts)`` fits, and use them."""
    kwargs = predictor_kwargs(str(tiny_model_dir), calibrate_on="driver", calibration_texts=TEXTS[:12], device="cpu")
    parts = tiny_embedder.encode_parts(TEXTS[:12], show_progress_bar=False)
    expected = Statistics.fit(parts.hidden, parts.routing, source="").to_dict()
    got = dict(kwargs["statistics"])
    for channel in ("hidden", "routing"):
        for stat in ("mean", "std"):
            np.testing.assert_allclose(got[channel][stat], expected[channel][stat], rtol=1e-5, atol=1e-6)
    predictor = MoEEPredictor(**kwargs)
    assert predictor.embedder.statistics.to_dict() == got
    single = MoEEmbedder(str(tiny_model_dir), device="cpu", statistics=got).encode(TEXTS[:4])
    np.testing.assert_allclose(_vectors(predictor(pa.table({"text": TEXTS[:4]}))), single, atol=ATOL)


def test_bad_arguments_fail_before_any_work(tiny_embedder, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unknown MoEEmbedder options \\['mdoe'\\]"):
        predictor_kwargs("moee:olmoe", mdoe="sum")
    with pytest.raises(ValueError, match="model= or embedder=, not both"):
        predictor_kwargs("moee:olmoe", embedder=tiny_embedder)
    with pytest.raises(ValueError, match="needs model="):
        predictor_kwargs()
    with pytest.raises(ValueError, match="cannot tell the format"):
        embed_files(tmp_path / "corpus.xml", tmp_path / "out", "moee:olmoe")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.parquet").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not empty"):
        embed_files(tmp_path / "c.txt", tmp_path / "full", "moee:olmoe")


def test_overwrite_never_reaches_a_folder_moee_did_not_write(tmp_path: Path) -> None:
    """Ray's overwrite mode empties a folder: a user's folder, or one holding the input, is refused before any work."""
    from moee_plugins.io.ownership import OutputError

    folder = tmp_path / "data"
    folder.mkdir()
    corpus = folder / "corpus.txt"
    corpus.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(OutputError, match="holds the input"):
        embed_files(corpus, folder, "moee:olmoe", overwrite=True)
    with pytest.raises(OutputError, match="is the input"):
        embed_files(folder, folder, "moee:olmoe", input_format="txt", overwrite=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"not written by moee .* holds 'notes.md'"):
        embed_files(tmp_path / "c.txt", tmp_path / "mine", "moee:olmoe", overwrite=True)
    with pytest.raises(ValueError, match="overwrite=True needs a local output_dir"):
        embed_files(tmp_path / "c.txt", "s3://bucket/vectors", "moee:olmoe", overwrite=True)
    assert corpus.read_text() == "a\nb\n" and (tmp_path / "mine" / "notes.md").read_text() == "keep me"


# ------------------------------------------------------------------ on a local cluster
@pytest.mark.ray
def test_embed_files_matches_single_process(ray_cluster, tiny_alias, reference, tmp_path: Path) -> None:
    """Two actors, statistics calibrated once in a worker task, a custom alias shipped to the workers."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"title": "t", "text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    summary = embed_files(corpus, tmp_path / "out", tiny_alias, concurrency=2, num_cpus=0.5, batch_size=8,
                          rows_per_file=16, device="cpu")
    assert summary["rows"] == len(TEXTS) and summary["dim"] == reference.shape[1]
    assert len(summary["files"]) > 1
    table = pa.concat_tables(pq.read_table(f) for f in sorted(summary["files"]))
    assert table.schema == pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32(), reference.shape[1]))])
    assert table.column("id").to_pylist() == list(range(len(TEXTS)))  # every row once, shards in input order
    np.testing.assert_allclose(_vectors(table, "vector"), reference, atol=ATOL)


@pytest.mark.ray
def test_killed_actor_is_restarted_and_its_batch_retried(ray_cluster, tiny_embedder, reference,
                                                         tmp_path: Path) -> None:
    """The first batch any actor takes kills its process (once, across restarts); Ray restarts the actor and
    retries the batch: every row still comes back exactly once with its own vector."""
    import ray.data

    marker = str(tmp_path / "killed")

    class DiesOnce(MoEEPredictor):  # defined locally, so Ray ships it by value
        def __call__(self, batch):
            out = super().__call__(batch)  # mid-batch: the vectors are computed, never returned
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return out
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os._exit(1)

    ids = list(range(1000, 1000 + len(TEXTS)))
    ds = ray.data.from_items([{"doc": i, "text": t} for i, t in zip(ids, TEXTS, strict=True)], override_num_blocks=6)
    out = ds.map_batches(DiesOnce, fn_constructor_kwargs=predictor_kwargs(embedder=tiny_embedder, device="cpu"),
                         compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5, batch_size=8,
                         batch_format="pyarrow")
    table = pa.concat_tables(ray.get(out.to_arrow_refs()))
    assert os.path.exists(marker), "no actor was killed"
    assert int(Path(marker).read_text()) != os.getpid()
    assert table.num_rows == len(TEXTS)
    got = table.column("doc").to_pylist()
    assert sorted(got) == ids
    order = [i - 1000 for i in got]
    assert table.column("text").to_pylist() == [TEXTS[i] for i in order]
    np.testing.assert_allclose(_vectors(table), reference[order], atol=ATOL)


@pytest.mark.ray
def test_readers_give_the_rows_read_corpus_gives(ray_cluster, tmp_path: Path) -> None:
    """txt keeps empty lines, csv keeps number-like text as written, ids are row positions or id_field."""
    texts = ["first line", "", "1.50", "last, with comma"]
    (tmp_path / "c.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    pd.DataFrame({"body": texts, "n": range(4)}).to_csv(tmp_path / "c.csv", index=False)
    pq.write_table(pa.table({"key": ["a", "b", "c", "d"], "text": texts}), tmp_path / "c.parquet")

    for path, options in ((tmp_path / "c.txt", {}), (tmp_path / "c.csv", {"text_column": "body"})):
        rows = sorted((r["id"], r["text"]) for r in read_corpus_dataset(path, **options).take_all())
        assert rows == list(enumerate(read_corpus(path, **options))) == list(enumerate(texts))
    rows = read_corpus_dataset(tmp_path / "c.parquet", id_field="key").take_all()
    assert {r["id"]: r["text"] for r in rows} == dict(zip("abcd", texts, strict=True))
    (tmp_path / "cr.txt").write_bytes(b"\xef\xbb\xbfone\rstill one\r\ntwo\n")  # a BOM, a lone \r, a \r\n
    rows = sorted((r["id"], r["text"]) for r in read_corpus_dataset(tmp_path / "cr.txt").take_all())
    assert rows == list(enumerate(read_corpus(tmp_path / "cr.txt"))) == [(0, "one\rstill one"), (1, "two")]
    with pytest.raises(ValueError, match=r"no column 'body'.*text_column"):
        read_corpus_dataset(tmp_path / "c.parquet", text_column="body")


@pytest.mark.ray
def test_moee_embed_engine_ray_cli(ray_cluster, tiny_model_dir, reference, tmp_path: Path, capsys) -> None:
    """`moee embed --engine ray` runs the same job from the command line: parquet shards, input order, same vectors."""
    from moee_plugins.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(t + "\n" for t in TEXTS), encoding="utf-8")
    out = tmp_path / "vectors"
    code = main(["embed", str(corpus), "-o", str(out), "--engine", "ray", "--model", str(tiny_model_dir),
                 "--device", "cpu", "--actors", "1", "--num-cpus", "1", "--ray-batch-size", "16", "-q"])
    assert code == 0
    assert f"wrote {len(TEXTS)} x {reference.shape[1]}" in capsys.readouterr().out
    table = pa.concat_tables(pq.read_table(f) for f in sorted(out.glob("*.parquet")))
    assert table.column("id").to_pylist() == list(range(len(TEXTS)))
    np.testing.assert_allclose(_vectors(table, "vector"), reference, atol=ATOL)
    assert main(["embed", str(corpus), "-o", str(out), "--engine", "ray", "--resume"]) == 2
    # the folder is moee's (marked): --overwrite writes a new one and swaps it in
    first = sorted(p.name for p in out.iterdir())
    assert ".moee-output.json" in first
    assert main(["embed", str(corpus), "-o", str(out), "--engine", "ray", "--model", str(tiny_model_dir), "--device",
                 "cpu", "--actors", "1", "--num-cpus", "1", "--ray-batch-size", "16", "-q", "--overwrite"]) == 0
    again = sorted(p.name for p in out.iterdir())
    assert ".moee-output.json" in again and len(again) == len(first) and set(again) != set(first)  # new shards
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "vectors"]  # no staging or lock left behind
    table = pa.concat_tables(pq.read_table(f) for f in sorted(out.glob("*.parquet")))
    np.testing.assert_allclose(_vectors(table, "vector"), reference, atol=ATOL)
    # a folder holding the input is refused, --overwrite or not, and left as it was
    assert main(["embed", str(corpus), "-o", str(tmp_path), "--engine", "ray", "--overwrite", "-q"]) == 2
    assert "holds the input" in capsys.readouterr().err and corpus.is_file()
