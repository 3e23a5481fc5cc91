"""Every adapter's docstring example runs as written, with ``moee:olmoe`` mapped to the tiny local model (the real one
needs the Hub) and ``"cuda"`` read as ``"cpu"``; the values the examples show are checked. The Ray example reads from
``s3://`` and the MTEB one downloads its task: those two are checked for shape only (they name real classes and
functions); their flows run in integrations/ray and integrations/mteb."""

from __future__ import annotations

import doctest
import importlib
import json
from importlib import resources

import pytest

PARSER = doctest.DocTestParser()
RUNNABLE = {
    "moee_plugins.sentence_transformers": "MoEEModule",
    "moee_plugins.langchain": "MoEEmbeddings",
    "moee_plugins.llama_index": "MoEEmbedding",
    "moee_plugins.bertopic": "MoEEBackend",
}
NOT_RUNNABLE = {"moee_plugins.ray": "MoEEPredictor", "moee_plugins.evaluation.mteb": "MoEEMTEBModel"}


def example_sources(module: str, name: str) -> list[str]:
    docstring = getattr(importlib.import_module(module), name).__doc__ or ""
    return [example.source for example in PARSER.get_examples(docstring)]


def run_examples(sources: list[str], namespace: dict) -> list:
    """Run the examples in order, as doctest would; return the value of each expression line (None for statements)."""
    values = []
    for source in sources:
        source = source.replace('"cuda"', '"cpu"')
        try:
            code = compile(source, "<docstring>", "eval")
        except SyntaxError:
            exec(compile(source, "<docstring>", "exec"), namespace)
            values.append(None)
        else:
            values.append(eval(code, namespace))
    return values


@pytest.fixture
def olmoe_is_tiny(tiny_model_dir, small_builtin_calibration):
    from moee_plugins import get_alias, register_alias

    real = get_alias("olmoe")
    register_alias("olmoe", str(tiny_model_dir), description=real.description, defaults=real.defaults, overwrite=True)
    yield
    register_alias(real.name, real.model_id, description=real.description, defaults=real.defaults,
                   requires_remote_code=real.requires_remote_code, overwrite=True)


def sample_documents() -> list[str]:
    lines = resources.files("moee_plugins.data").joinpath("sample_corpus.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()]


@pytest.mark.parametrize("module", sorted({**RUNNABLE, **NOT_RUNNABLE}))
def test_every_adapter_class_has_an_example_that_uses_it(module):
    name = {**RUNNABLE, **NOT_RUNNABLE}[module]
    sources = example_sources(module, name)
    assert len(sources) >= 3, f"{module}.{name} has no docstring example"
    assert any(f"from {module} import" in s and name in s for s in sources)
    for source in sources:  # each line at least compiles
        compile(source, "<docstring>", "exec")


def test_sentence_transformers_example(olmoe_is_tiny):
    namespace: dict = {}
    shape = run_examples(example_sources("moee_plugins.sentence_transformers", "MoEEModule"), namespace)[-1]
    assert shape == (1, namespace["module"].embedder.dim)


def test_langchain_example(olmoe_is_tiny):
    namespace: dict = {}
    hits = run_examples(example_sources("moee_plugins.langchain", "MoEEmbeddings"), namespace)[-1]
    assert len(hits) == 1 and hits[0].page_content in {"GPUs and printers", "The hockey team won."}
    assert namespace["embeddings"].embedder.device.type == "cpu"


def test_llama_index_example(olmoe_is_tiny):
    from llama_index.core import Settings

    before = Settings._embed_model
    try:
        hits = run_examples(example_sources("moee_plugins.llama_index", "MoEEmbedding"), {})[-1]
    finally:
        Settings._embed_model = before
    assert [hit.node.get_content() for hit in hits] == ["The hockey team won."]


def test_bertopic_example(olmoe_is_tiny):
    docs = sample_documents()
    namespace: dict = {"docs": docs}
    values = run_examples(example_sources("moee_plugins.bertopic", "MoEEBackend"), namespace)
    topics = namespace["topics"]
    assert len(topics) == len(docs)
    similar_topics, similarities = values[-1]
    assert len(similar_topics) == len(similarities) > 0
