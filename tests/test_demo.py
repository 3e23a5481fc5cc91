"""``moee demo``: the main job end to end, offline, on a tiny random model and the bundled sample corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moee_plugins import MoEEmbedder
from moee_plugins.cli import main
from moee_plugins.commands import demo

pytest.importorskip("bertopic", reason="the demo's topic step needs the bertopic extra")
# the demo calibrates the model it builds (three times: embed, search, topics); a short calibration set keeps the
# test quick, and the search test below calibrates on the same set, so its vectors are the demo's to the bit
pytestmark = pytest.mark.usefixtures("small_builtin_calibration_for_module")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, small_builtin_calibration_for_module):
    import contextlib
    import io

    outdir = tmp_path_factory.mktemp("demo") / "out"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["demo", "-o", str(outdir)])
    return code, out.getvalue(), err.getvalue(), outdir


def test_the_sample_corpus_ships_with_the_package():
    rows = [json.loads(line) for line in demo.sample_corpus_path().read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 40 and [row["id"] for row in rows] == list(range(40))
    assert {row["topic"] for row in rows} == {"space", "cooking", "football", "computing"}
    assert all(isinstance(row["text"], str) and len(row["text"].split()) >= 5 for row in rows)


def test_demo_runs_every_step_and_writes_its_outputs(demo_run):
    code, out, err, outdir = demo_run
    assert code == 0, err
    for step in ("$ moee embed ", "$ moee topics ", "query: "):
        assert step in out
    assert "Embedding" in err and "Topics" in err  # progress bars
    for name in ("README.txt", "corpus.jsonl", "vectors.npy", "search.txt", "topics/topics.csv", "topics/topic_map.html",
                 "topics/topic_barchart.html", f"{demo.TINY_MODEL_DIR}/config.json"):
        assert (outdir / name).is_file(), name


def test_demo_says_the_weights_are_random_and_how_to_run_the_real_model(demo_run):
    _, out, _, outdir = demo_run
    readme = (outdir / "README.txt").read_text(encoding="utf-8")
    for text in (out, readme):
        assert "RANDOM" in text and "MEANINGLESS" in text and "--model moee:olmoe" in text
    assert out.rstrip().endswith("moee demo --model moee:olmoe")
    assert "meaningless" in (outdir / "search.txt").read_text(encoding="utf-8")


def test_search_results_are_the_nearest_documents(demo_run):
    _, _, _, outdir = demo_run
    corpus = [json.loads(line) for line in (outdir / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    vectors = np.load(outdir / "vectors.npy")
    embedder = MoEEmbedder(str(outdir / demo.TINY_MODEL_DIR), device="cpu")
    assert vectors.shape == (len(corpus), embedder.dim)
    np.testing.assert_allclose(embedder.encode([corpus[3]["text"]])[0], vectors[3], atol=1e-5)  # row i = document i
    scores = embedder.similarity(embedder.encode([demo.DEFAULT_QUERY]), vectors)[0]
    expected = [corpus[i]["text"] for i in np.argsort(-scores, kind="stable")[: demo.TOP_K]]
    lines = (outdir / "search.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == f"query: {demo.DEFAULT_QUERY}"
    assert [line.split("] ", 1)[1] for line in lines[1: 1 + demo.TOP_K]] == expected


def test_a_real_model_gets_no_random_warning_in_its_readme():
    readme = demo._readme("moee:olmoe", tiny=False, query="q")
    assert "RANDOM" not in readme and "Model: moee:olmoe." in readme


def test_an_output_path_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x", encoding="utf-8")
    assert main(["demo", "-o", str(path), "-q"]) == 2
    assert "is not a directory" in capsys.readouterr().err
