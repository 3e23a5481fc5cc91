"""``long_texts="chunk"``: a long text's row pools its windows' raw parts; short texts and row order are unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from moee_plugins import MoEEmbedder
from moee_plugins.core.chunking import split_text

MAX_LENGTH = 48
TEMPLATE = "Passage: {text} In one word:"  # a template without clean-up: a window's text is wrapped as is


def long_text(topic: str, sentences: int = 12) -> str:
    return " ".join(f"Sentence {i} of this report is about {topic} and nothing else." for i in range(sentences))


@pytest.fixture(scope="module")
def embedders(tiny_embedder, tiny_statistics):
    """(truncate, chunk) embedders of the tiny model sharing its loaded model, a custom template and statistics."""
    def sibling(**options):
        return MoEEmbedder(tiny_embedder.model, tiny_embedder.tokenizer, device="cpu", prompt=TEMPLATE,
                           max_length=MAX_LENGTH, statistics=tiny_statistics, **options)

    return sibling(), sibling(long_texts="chunk", chunk_overlap=6)


@pytest.fixture
def forward_shapes(tiny_embedder):
    """(rows, width) of every forward pass the tiny model runs, via a hook on the model itself."""
    shapes: list[tuple[int, int]] = []
    handle = tiny_embedder.model.register_forward_pre_hook(
        lambda _module, _args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    yield shapes
    handle.remove()


def test_a_long_row_is_the_token_weighted_mean_of_its_windows_encoded_by_hand(embedders):
    truncate, chunk = embedders
    text = long_text("hockey")
    windows = split_text(chunk.tokenizer, chunk.prompt, text, MAX_LENGTH, 6)
    assert len(windows) >= 3
    # the windows cover the text in order, each overlapping the previous one, and each fits
    position = 0
    for k, (window, ids) in enumerate(windows):
        at = text.find(window, max(0, position - len(window)))
        assert at >= 0 and (at == 0 if k == 0 else at < position)
        position = at + len(window)
        assert len(ids) <= MAX_LENGTH
    assert position == len(text)

    by_hand = truncate.encode_parts([window for window, _ in windows])
    assert by_hand.num_tokens.max() <= MAX_LENGTH
    weights = by_hand.num_tokens.astype(np.float64)[:, None]
    expected_hidden = (weights * by_hand.hidden).sum(0) / weights.sum()
    expected_routing = (weights * by_hand.routing).sum(0) / weights.sum()
    parts = chunk.encode_parts([text])
    assert np.abs(parts.hidden[0] - expected_hidden).max() < 1e-4
    assert np.abs(parts.routing[0] - expected_routing).max() < 1e-4
    assert parts.num_tokens[0] == by_hand.num_tokens.sum()
    for mode in ("hs", "rw", "concat", "sum"):  # every mode combines the pooled row like any other
        vector = chunk.combine(parts, mode)[0]
        assert np.isfinite(vector).all() and abs(np.linalg.norm(vector) - 1) < 1e-4


def test_the_end_of_a_long_text_changes_its_vector_only_when_chunked(embedders):
    truncate, chunk = embedders
    start = long_text("hockey", 4)
    same_start = [start + " The end is about printers, error codes and paper jams in the office.",
                  start + " The end is about the moon, comets and the orbit of Jupiter at night."]
    cut = truncate.encode(same_start)
    assert np.abs(cut[0] - cut[1]).max() < 1e-6  # truncated: the different endings are never seen
    whole = chunk.encode(same_start)
    assert np.abs(whole[0] - whole[1]).max() > 1e-3


def test_short_texts_are_unchanged_and_rows_keep_input_order(embedders):
    truncate, chunk = embedders
    texts = ["moon", long_text("printers"), "GPUs and printers", long_text("the moon", 20), "x", long_text("bread", 5)]
    mixed = chunk.encode(texts)
    backward = chunk.encode(texts[::-1])
    assert np.abs(mixed[::-1] - backward).max() < 1e-4
    short = [0, 2, 4]
    assert np.abs(mixed[short] - truncate.encode([texts[i] for i in short])).max() < 1e-4
    for i in (1, 3, 5):  # each long row is that text's own, not a neighbour's
        assert np.abs(mixed[i] - chunk.encode(texts[i])).max() < 1e-4
    assert np.abs(mixed[1] - mixed[3]).max() > 1e-2


@pytest.mark.parametrize(("batch_size", "budget"), [(1, None), (3, 200), (64, 96)])
def test_chunked_rows_are_batch_invariant(embedders, batch_size, budget):
    _, chunk = embedders
    texts = [long_text("hockey"), "moon", long_text("encryption", 7), "Cars need maintenance."]
    alone = np.stack([chunk.encode_parts([t]).hidden[0] for t in texts])
    planned = MoEEmbedder.from_config(chunk.config, model=chunk.model, tokenizer=chunk.tokenizer,
                                      max_tokens_per_batch=budget)
    parts = planned.encode_parts(texts, batch_size=batch_size)
    assert np.abs(parts.hidden - alone).max() < 1e-4


def test_a_many_window_document_runs_in_budgeted_batches_and_is_tokenised_in_slices(embedders, forward_shapes):
    truncate, _ = embedders
    calls: list[int] = []

    class CountingTokenizer:
        """The real tokenizer, recording the characters handed to each call."""

        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def __call__(self, text, *args, **kwargs):
            calls.append(max(map(len, text)) if isinstance(text, list) else len(text))
            return self._inner(text, *args, **kwargs)

    chunk = MoEEmbedder(truncate.model, CountingTokenizer(truncate.tokenizer), device="cpu", prompt=TEMPLATE,
                        max_length=MAX_LENGTH, long_texts="chunk", max_tokens_per_batch=8 * MAX_LENGTH,
                        statistics=truncate.statistics)
    document = long_text("hockey", 150)
    parts = chunk.encode_parts([document])
    assert parts.num_tokens[0] > 60 * MAX_LENGTH  # dozens of windows ...
    assert len(forward_shapes) >= 8  # ... run as several forward passes
    assert max(rows * width for rows, width in forward_shapes) <= 8 * MAX_LENGTH
    assert max(calls) < len(document) / 10  # never the whole document in one tokenizer call


def test_options_are_part_of_the_identity_and_checked(embedders, tiny_embedder):
    truncate, chunk = embedders
    assert chunk.config["long_texts"] == "chunk" and chunk.config["chunk_overlap"] == 6
    assert truncate.fingerprint("parts") != chunk.fingerprint("parts")
    again = MoEEmbedder.from_config(chunk.config, model=chunk.model, tokenizer=chunk.tokenizer)
    assert (again.long_texts, again.chunk_overlap) == ("chunk", 6)
    with pytest.raises(ValueError, match="long_texts must be one of"):
        MoEEmbedder(tiny_embedder.model, tiny_embedder.tokenizer, device="cpu", long_texts="split")
    with pytest.raises(ValueError, match="chunk_overlap"):
        MoEEmbedder(tiny_embedder.model, tiny_embedder.tokenizer, device="cpu", chunk_overlap=-1)
    too_much = MoEEmbedder(tiny_embedder.model, tiny_embedder.tokenizer, device="cpu", prompt=TEMPLATE,
                           max_length=MAX_LENGTH, long_texts="chunk", chunk_overlap=MAX_LENGTH,
                           statistics=tiny_embedder.statistics)
    with pytest.raises(ValueError, match="chunk_overlap=48 must be smaller"):
        too_much.encode(long_text("hockey"))


def test_adapters_pass_long_texts_through(embedders, tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    from moee_plugins.langchain import MoEEmbeddings
    from moee_plugins.llama_index import MoEEmbedding
    from moee_plugins.sentence_transformers import MoEEModule

    _, chunk = embedders
    texts = [long_text("hockey"), "moon", long_text("printers", 6)]
    expected = chunk.encode(texts)
    module = MoEEModule(chunk)
    st_model = SentenceTransformer(modules=[module], similarity_fn_name=module.similarity_fn_name, device="cpu")
    assert np.abs(st_model.encode(texts, batch_size=2) - expected).max() < 1e-4
    options = {"device": "cpu", "prompt": TEMPLATE, "max_length": MAX_LENGTH, "long_texts": "chunk",
               "chunk_overlap": 6, "statistics": chunk.statistics}
    langchain = MoEEmbeddings(model=str(tiny_model_dir), model_kwargs=options)
    assert np.abs(np.array(langchain.embed_documents(texts)) - expected).max() < 1e-4
    llama = MoEEmbedding(str(tiny_model_dir), model_kwargs=options)
    assert np.abs(np.array(llama.get_text_embedding_batch(texts)) - expected).max() < 1e-4


def test_moee_embed_long_texts_chunk(embedders, tmp_path):
    from moee_plugins.cli import main

    _, chunk = embedders
    texts = [long_text("hockey"), "moon", long_text("printers", 6)]
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "vectors.npy"
    assert main(["embed", str(corpus), "-o", str(out), "--model", str(chunk.model_path), "--mode", "hs", "-q",
                 "--device", "cpu", "--prompt", TEMPLATE, "--max-length", str(MAX_LENGTH), "--long-texts", "chunk",
                 "--chunk-overlap", "6"]) == 0
    np.testing.assert_allclose(np.load(out), chunk.encode(texts, mode="hs"), atol=1e-4)


def test_long_documents_example_runs_offline(tiny_model_dir, monkeypatch, small_builtin_calibration, capsys):
    import runpy
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "long_documents.py"
    monkeypatch.setenv("MOEE_EXAMPLE_MODEL", str(tiny_model_dir))  # the environment switch to the tiny model
    results = runpy.run_path(str(example))["main"](["--device", "cpu", "--max-length", "128", "--overlap", "8"])
    assert results["truncate"]["tokens"] == 128
    assert results["chunk"]["tokens"] > 10 * 128  # the whole report was read
    assert results["difference"]["l2"] > 0.1
    out = capsys.readouterr().out
    assert "long document:" in out and out.count("ranks") == 2
