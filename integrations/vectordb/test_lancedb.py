"""LanceDB reads `moee embed`'s Parquet output as it is (ids + compact vectors) and answers a query embedded with the
settings `moee calibrate --dimensions` saved: the same documents a brute-force search over the file finds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moee_plugins import MoEEmbedder, calibration_sentences
from moee_plugins.cli import main

lancedb = pytest.importorskip("lancedb", reason="lancedb is not installed (dev extra)")
pq = pytest.importorskip("pyarrow.parquet")

DIMENSIONS = 16
DOCUMENTS = {
    "hockey": "The hockey team won the championship after a dramatic overtime goal.",
    "printer": "If the printer shows error 49, switch it off, wait thirty seconds and switch it on again.",
    "bread": "Bake the bread at two hundred degrees Celsius for forty minutes.",
    "senate": "The senate passed the budget bill late on Thursday night.",
    "comet": "Astronomers observed a new comet near the orbit of Jupiter.",
    "garden": "Water the tomatoes in the morning so the leaves dry before night.",
    "kayak": "Paddle the kayak along the river at dawn.",
}


@pytest.fixture(scope="module")
def embedded(tiny_model_dir, tmp_path_factory, one_thread) -> tuple[Path, Path]:
    """The CLI flow a user runs: calibrate with --dimensions, then embed to Parquet with ids."""
    work = tmp_path_factory.mktemp("lance")
    sample = work / "sample.txt"
    sample.write_text("\n".join(calibration_sentences()[:80]) + "\n", encoding="utf-8")
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": k, "text": t}) + "\n" for k, t in DOCUMENTS.items()), encoding="utf-8")
    stats, out = work / "stats.json", work / "vectors.parquet"
    model = ["--model", str(tiny_model_dir), "--device", "cpu"]
    assert main(["calibrate", *model, "--texts", str(sample), "--dimensions", str(DIMENSIONS), "-o", str(stats)]) == 0
    assert main(["embed", str(corpus), "-o", str(out), *model, "--statistics", str(stats), "--dimensions",
                 str(DIMENSIONS), "--id-field", "id", "-q"]) == 0
    return stats, out


def query_embedder(model_dir: Path, stats: Path) -> MoEEmbedder:
    """An embedder with the same settings as the embed run: the statistics and reduction of the calibrate file."""
    saved = json.loads(stats.read_text(encoding="utf-8"))
    return MoEEmbedder(str(model_dir), device="cpu", statistics=saved["statistics"], reduction=saved["reduction"])


def test_lancedb_answers_queries_from_the_parquet_file(embedded, tiny_model_dir, tmp_path):
    stats, out = embedded
    table = lancedb.connect(str(tmp_path / "db")).create_table("docs", data=pq.read_table(str(out)))
    assert table.count_rows() == len(DOCUMENTS)
    rows = table.to_arrow()
    ids = rows.column("id").to_pylist()
    vectors = np.asarray(rows.column("vector").to_pylist(), dtype=np.float32)
    assert sorted(ids) == sorted(DOCUMENTS) and vectors.shape == (len(DOCUMENTS), DIMENSIONS)
    embedder = query_embedder(tiny_model_dir, stats)
    np.testing.assert_allclose(vectors, embedder.encode([DOCUMENTS[i] for i in ids], dimensions=DIMENSIONS), atol=1e-5)
    for key, text in [*DOCUMENTS.items(), ("-", "who won the hockey game?")]:
        q = embedder.encode([text], dimensions=DIMENSIONS)[0]
        found = [r["id"] for r in table.search(q).distance_type("cosine").limit(3).to_list()]
        cos = vectors @ q / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(q))
        assert found == [ids[i] for i in np.argsort(-cos, kind="stable")[:3]]
        if key != "-":
            assert found[0] == key
