"""Chroma end to end, through langchain-chroma and llama-index-vector-stores-chroma (examples/vector_databases.py):
compact vectors persisted, reloaded in a fresh process, documents added and deleted, and the documents that come
back are the ones a brute-force search over the same vectors finds (the tiny model is random, so "right" means
exactly that, and a stored document's own text finds that document first)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moee_plugins import MoEEmbedder

pytest.importorskip("langchain_chroma", reason="langchain-chroma is not installed (dev extra)")
pytest.importorskip("llama_index.vector_stores.chroma", reason="llama-index-vector-stores-chroma is not installed")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "vector_databases.py"
DIMENSIONS = 16
K = 3


def load_example():
    spec = importlib.util.spec_from_file_location("vector_databases_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return load_example()


@pytest.fixture(scope="module")
def db(example, tiny_model_dir, tmp_path_factory, one_thread) -> Path:
    path = tmp_path_factory.mktemp("vector-db")
    counts = example.main(["index", str(path), "--model", str(tiny_model_dir), "--device", "cpu",
                           "--dimensions", str(DIMENSIONS)])
    assert counts == {"langchain": len(example.DEMO_DOCUMENTS), "llama_index": len(example.DEMO_DOCUMENTS)}
    return path


def brute_force(embedder: MoEEmbedder, documents: dict[str, str], query: str, k: int = K) -> list[str]:
    """The k nearest documents by cosine over the same compact vectors, computed here without any database."""
    keys = list(documents)
    vectors = embedder.encode(list(documents.values()), dimensions=DIMENSIONS)
    q = embedder.encode([query], dimensions=DIMENSIONS)[0]
    cos = vectors @ q / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(q))
    return [keys[i] for i in np.argsort(-cos, kind="stable")[:k]]


def test_a_fresh_process_finds_the_right_documents(example, db, tmp_path):
    documents = example.DEMO_DOCUMENTS
    queries = [*documents.values(), *example.DEMO_QUERIES]
    home = tmp_path / "home"  # where Chroma's default embedding function would download its ONNX model
    env = dict(os.environ, PYTHONPATH=str(ROOT), HOME=str(home), OMP_NUM_THREADS="1")
    argv = [sys.executable, str(EXAMPLE), "search", str(db), "--device", "cpu", "--json", "--k", str(K)]
    for query in queries:
        argv += ["--query", query]
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [r["query"] for r in results] == queries
    embedder = MoEEmbedder.from_pretrained(db / "embedder", device="cpu")
    assert embedder.reduction is not None and DIMENSIONS in embedder.reduction.dimensions
    for key, result in zip(documents, results[:len(documents)], strict=True):
        assert result["langchain"][0] == key and result["llama_index"][0] == key, result
    for result in results:
        expected = brute_force(embedder, documents, result["query"])
        assert result["langchain"] == expected and result["llama_index"] == expected, (result, expected)
    assert not (home / ".cache" / "chroma").exists()  # Chroma never fell back to its own embedding model


def test_stored_vectors_are_the_compact_ones(example, db, tiny_model_dir):
    embedder = MoEEmbedder.from_pretrained(db / "embedder", device="cpu")
    expected = embedder.encode(list(example.DEMO_DOCUMENTS.values()), dimensions=DIMENSIONS)
    for name in example.COLLECTIONS:
        stored = example.client(db).get_collection(name).get(ids=list(example.DEMO_DOCUMENTS), include=["embeddings"])
        vectors = np.asarray(stored["embeddings"], dtype=np.float32)
        assert vectors.shape == (len(example.DEMO_DOCUMENTS), DIMENSIONS)
        order = [stored["ids"].index(key) for key in example.DEMO_DOCUMENTS]
        np.testing.assert_allclose(vectors[order], expected, atol=1e-5)


def test_add_and_delete(example, db, tmp_path):
    from llama_index.core.schema import TextNode

    embedder = MoEEmbedder.from_pretrained(db / "embedder", device="cpu")
    documents = dict(example.DEMO_DOCUMENTS)
    new = {"kayak": "Paddle the kayak along the river at dawn."}
    lc = example.langchain_store(db, embedder, DIMENSIONS)
    index = example.llama_index(db, embedder, DIMENSIONS)
    lc.delete(ids=["bread"])
    index.delete_nodes(["bread"])
    lc.add_texts(list(new.values()), ids=list(new))
    index.insert_nodes([TextNode(id_=key, text=text) for key, text in new.items()])
    del documents["bread"]
    documents.update(new)
    retriever = index.as_retriever(similarity_top_k=K)
    for name in example.COLLECTIONS:
        assert example.client(db).get_collection(name).count() == len(documents)
    for key, text in [*documents.items(), ("-", example.DEMO_DOCUMENTS["bread"])]:
        found_lc = [d.id for d in lc.similarity_search(text, k=K)]
        found_li = [n.node.node_id for n in retriever.retrieve(text)]
        assert "bread" not in found_lc + found_li
        assert found_lc == found_li == brute_force(embedder, documents, text)
        if key != "-":
            assert found_lc[0] == key
