"""``moee topics`` end to end on the tiny model (real UMAP + HDBSCAN pipeline), and its input errors."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import py_compile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moee_plugins import MoEEmbedder
from moee_plugins.cli import main

pytest.importorskip("bertopic", reason="the bertopic extra is not installed")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bertopic_20newsgroups.py"


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["topics", *argv])
    return code, out.getvalue(), err.getvalue()


class TagCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory, corpus_factory) -> tuple[Path, list[str]]:
    docs, _ = corpus_factory(120, seed=3)
    docs[7] = "The HOCKEY team's \"goalie\", stopped every puck, in the playoff."  # quotes and commas survive
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": i, "body": d}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return path, docs


@pytest.fixture(scope="module")
def cli_run(corpus_file, tiny_alias, tmp_path_factory) -> tuple[int, str, str, Path]:
    path, _ = corpus_file
    outdir = tmp_path_factory.mktemp("topics") / "out"
    code, out, err = run_cli(str(path), "-o", str(outdir), "--model", tiny_alias, "--text-field", "body",
                             "--calibrate", "corpus", "--device", "cpu", "--batch-size", "16", "--save-model")
    return code, out, err, outdir


def test_cli_succeeds_and_reports(cli_run, corpus_file):
    code, out, err, _ = cli_run
    assert code == 0, err
    assert out.startswith(f"{len(corpus_file[1])} documents, ")
    assert "Encoding" in err and "Topics" in err  # progress bars


def test_topics_csv_keeps_every_document_in_order(cli_run, corpus_file):
    _, _, _, outdir = cli_run
    docs = corpus_file[1]
    with (outdir / "topics.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["document"] for row in rows] == docs
    assert list(rows[0]) == ["document", "topic", "probability"]
    info = pd.read_csv(outdir / "topic_info.csv")
    topics = [int(row["topic"]) for row in rows]
    assert set(topics) <= set(info.Topic) and (info.Topic != -1).sum() >= 2
    assert dict(zip(info.Topic, info.Count, strict=True)) == pd.Series(topics).value_counts().to_dict()
    probabilities = np.array([float(row["probability"]) for row in rows])
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    for words in info.Representation:
        assert all(isinstance(word, str) and word for word in json.loads(words))


def test_embeddings_are_the_embedders_row_for_row(cli_run, corpus_file, tiny_model_dir):
    _, _, _, outdir = cli_run
    docs = corpus_file[1]
    embeddings = np.load(outdir / "embeddings.npy")
    config = json.loads((outdir / "embedder.json").read_text())
    assert embeddings.dtype == np.float32 and embeddings.shape[0] == len(docs)
    assert config["statistics"]["source"] == "corpus corpus.jsonl"
    embedder = MoEEmbedder.from_config(config, model=str(tiny_model_dir), device="cpu")
    assert embeddings.shape[1] == embedder.dim
    picks = [0, 7, 59, len(docs) - 1]
    np.testing.assert_allclose(embedder.encode([docs[i] for i in picks]), embeddings[picks], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["topic_map.html", "topic_barchart.html"])
def test_visualisations_are_valid_html(cli_run, name):
    _, _, _, outdir = cli_run
    text = (outdir / name).read_text(encoding="utf-8")
    parser = TagCounter()
    parser.feed(text)
    parser.close()
    assert parser.tags.get("html") == 1 and parser.tags.get("body") == 1 and parser.tags.get("div", 0) >= 1
    assert any("Plotly.newPlot" in script for script in parser.scripts)


def test_saved_model_loads_with_its_backend(cli_run, corpus_file):
    from moee_plugins.bertopic import MoEEBackend, load_topic_model

    _, _, _, outdir = cli_run
    model = load_topic_model(outdir / "model", device="cpu")
    assert isinstance(model.embedding_model, MoEEBackend)
    topics, _ = model.transform(corpus_file[1][:3])
    assert len(topics) == 3 and set(topics) <= set(model.get_topic_info().Topic)


def test_small_csv_corpus_adapts_the_pipeline(tmp_path, tiny_alias, corpus_factory):
    docs, _ = corpus_factory(12, seed=5)
    docs[4] = ""  # kept, in order
    path = tmp_path / "small.csv"
    pd.DataFrame({"title": range(12), "content": docs}).to_csv(path, index=False)
    code, out, err = run_cli(str(path), "-o", str(tmp_path / "out"), "--model", tiny_alias, "--text-column",
                             "content", "--calibrate", "corpus", "--device", "cpu", "-q")
    assert code == 0, err
    assert "Loading weights" not in err and "%|" not in err  # -q: no bar of transformers' or any library's
    assert "min topic size 2" in out
    table = pd.read_csv(tmp_path / "out" / "topics.csv", keep_default_na=False)
    assert table.document.tolist() == docs
    assert np.load(tmp_path / "out" / "embeddings.npy").shape[0] == 12


@pytest.mark.parametrize(
    ("lines", "extra", "message"),
    [
        (5, [], "needs at least 10"),
        (12, ["--min-topic-size", "7"], "use at most 6"),
        (12, ["--min-topic-size", "1"], "at least 2"),
        (12, ["--batch-size", "0"], "--batch-size must be a positive integer"),
        (12, ["--nr-topics", "many"], "--nr-topics must be"),
    ],
)
def test_bad_input_is_a_clear_error_before_loading_a_model(tmp_path, lines, extra, message):
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(f"document number {i}" for i in range(lines)) + "\n", encoding="utf-8")
    code, out, err = run_cli(str(path), "-o", str(tmp_path / "out"), "--model", "moee:not-a-model", *extra)
    assert code == 2 and message in err and out == ""


def test_missing_file_wrong_column_and_unknown_model(tmp_path):
    code, _, err = run_cli(str(tmp_path / "nope.txt"), "-o", str(tmp_path / "out"))
    assert code == 2 and "no such corpus file" in err
    path = tmp_path / "docs.csv"
    pd.DataFrame({"body": [f"doc {i}" for i in range(12)]}).to_csv(path, index=False)
    code, _, err = run_cli(str(path), "-o", str(tmp_path / "out"))
    assert code == 2 and "no column 'text'" in err
    code, _, err = run_cli(str(path), "-o", str(tmp_path / "out"), "--text-column", "body", "--model",
                           "moee:not-a-model")
    assert code == 2 and "not-a-model" in err


def test_the_20newsgroups_example_compiles(tmp_path):
    """It needs the internet and a GPU, so it never runs here; it must at least compile."""
    py_compile.compile(str(EXAMPLE), cfile=str(tmp_path / "example.pyc"), doraise=True)
    assert "internet" in EXAMPLE.read_text(encoding="utf-8").split('"""')[1].lower()


def test_no_topic_found_exits_with_1_and_keeps_the_embeddings(tmp_path, tiny_alias, corpus_factory, monkeypatch):
    from bertopic import BERTopic
    from bertopic.dimensionality import BaseDimensionalityReduction

    from moee_plugins.bertopic import MoEEBackend
    from moee_plugins.commands import topics as command

    class AllOutliers:
        def fit(self, X, y=None):
            self.labels_ = np.full(len(X), -1)
            return self

    def build(embedder, n_documents, **kwargs):
        return BERTopic(embedding_model=MoEEBackend(embedder), umap_model=BaseDimensionalityReduction(),
                        hdbscan_model=AllOutliers())

    monkeypatch.setattr(command, "build_topic_model", build)
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(corpus_factory(12, seed=6)[0]) + "\n", encoding="utf-8")
    code, _, err = run_cli(str(path), "-o", str(tmp_path / "out"), "--model", tiny_alias, "--calibrate", "corpus",
                           "--device", "cpu", "-q")
    assert code == 1 and "no topics found" in err and "--min-topic-size" in err
    assert np.load(tmp_path / "out" / "embeddings.npy").shape[0] == 12
    assert not (tmp_path / "out" / "topics.csv").exists()


def test_stop_words_only_corpus_is_a_clear_error(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("the and of it\n" * 12, encoding="utf-8")
    code, _, err = run_cli(str(path), "-o", str(tmp_path / "out"), "--model", "moee:not-a-model")
    assert code == 2 and "0 distinct word(s)" in err


def _html_with_plot(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    parser = TagCounter()
    parser.feed(text)
    parser.close()
    assert parser.tags.get("html") == 1 and parser.tags.get("body") == 1
    assert any("Plotly.newPlot" in script for script in parser.scripts)
    return text


@pytest.mark.parametrize("n_clusters", [1, 2, 3, 5])
def test_topic_map_is_always_written_and_says_when_it_falls_back(make_model, tmp_path, n_clusters):
    """Fewer than 3 topics: BERTopic's 2-D map cannot be drawn, so the page shows the topics by size and says why.
    KMeans fixes the number of topics, so both cases are tested whatever a clustering would find."""
    from sklearn.cluster import KMeans

    from moee_plugins.commands import topics as command

    model = make_model(hdbscan_model=KMeans(n_clusters=n_clusters, n_init=3, random_state=0))
    assert len([t for t in model.get_topic_freq().Topic if t != -1]) == n_clusters
    written = command.write_visualisations(model, tmp_path)
    assert list(written) == ["topic_map.html", "topic_barchart.html"] and written["topic_barchart.html"] == ""
    topic_map = _html_with_plot(tmp_path / "topic_map.html")
    _html_with_plot(tmp_path / "topic_barchart.html")
    if n_clusters < command.MIN_MAP_TOPICS:
        assert written["topic_map.html"].startswith(f"{n_clusters} topic(s)")
        assert "needs at least 3" in topic_map and "Intertopic Distance Map" not in topic_map
        assert all(f"Topic {topic}" in topic_map for topic in range(n_clusters))
    else:
        assert written["topic_map.html"] == "" and "Intertopic Distance Map" in topic_map


def test_topic_map_falls_back_when_bertopic_cannot_draw_it(make_model, tmp_path, monkeypatch, caplog):
    from sklearn.cluster import KMeans

    from moee_plugins.commands import topics as command

    model = make_model(hdbscan_model=KMeans(n_clusters=4, n_init=3, random_state=0))

    def broken(*args, **kwargs):
        raise ValueError("zero-size array")

    monkeypatch.setattr(model, "visualize_topics", broken)
    with caplog.at_level("WARNING", logger="moee_plugins"):
        written = command.write_visualisations(model, tmp_path)
    assert "could not draw it (ValueError: zero-size array)" in written["topic_map.html"]
    assert "zero-size array" in caplog.text
    assert "could not draw it" in _html_with_plot(tmp_path / "topic_map.html")


def test_cli_reports_a_fallback_topic_map(tmp_path, tiny_alias, corpus_factory, monkeypatch):
    """Two topics end to end: exit 0, both pages written, and the fallback named on screen."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    from moee_plugins.commands import topics as command

    real_build = command.build_topic_model

    def two_topics(embedder, n_documents, **kwargs):
        model = real_build(embedder, n_documents, **kwargs)
        model.umap_model = PCA(n_components=4, random_state=0)
        model.hdbscan_model = KMeans(n_clusters=2, n_init=3, random_state=0)
        return model

    monkeypatch.setattr(command, "build_topic_model", two_topics)
    path = tmp_path / "docs.txt"
    path.write_text("\n".join(corpus_factory(20, seed=8)[0]) + "\n", encoding="utf-8")
    code, out, err = run_cli(str(path), "-o", str(tmp_path / "out"), "--model", tiny_alias, "--calibrate", "corpus",
                             "--device", "cpu", "-q")
    assert code == 0, err
    assert "20 documents, 2 topics" in out and "note: topic_map.html: 2 topic(s)" in out
    assert "topic_map.html" in out.splitlines()[-1] and "topic_barchart.html" in out.splitlines()[-1]
    assert "needs at least 3" in _html_with_plot(tmp_path / "out" / "topic_map.html")
