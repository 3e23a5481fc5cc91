"""Encoding features of sentence-transformers on an MoEE model, each checked against the core's own output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import util
from sentence_transformers.util import quantize_embeddings

from moee_plugins import PRESETS

PROMPTEOL = PRESETS["prompteol"]


def test_single_string_and_empty_input(st_model, tiny_embedder, texts):
    vector = st_model.encode(texts[0])
    assert vector.shape == (st_model.get_embedding_dimension(),)
    np.testing.assert_allclose(vector, tiny_embedder.encode(texts[0]), atol=1e-5)
    assert len(st_model.encode([])) == 0


def test_length_sorted_batches_match_one_at_a_time(st_model, texts):
    # sentence-transformers sorts by length and batches; rows must come back in input order, batch-independent
    batched = st_model.encode(texts, batch_size=3)
    alone = np.stack([st_model.encode([text], batch_size=1)[0] for text in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    shuffled = [texts[i] for i in (5, 1, 7, 0, 3)]
    np.testing.assert_allclose(st_model.encode(shuffled, batch_size=2), alone[[5, 1, 7, 0, 3]], atol=1e-5)


def test_preprocess_uses_the_core_template_and_truncation(st_model, tiny_embedder, texts):
    features = st_model.preprocess(texts)
    expected = tiny_embedder.tokenize(texts)
    for ids, mask, want in zip(features["input_ids"], features["attention_mask"], expected, strict=True):
        assert ids[mask.bool()].tolist() == want
    suffix = tiny_embedder.tokenizer(PROMPTEOL.suffix, add_special_tokens=False)["input_ids"]
    original = st_model.max_seq_length
    try:
        st_model.max_seq_length = 24
        long_ids = st_model.preprocess([" ".join(texts * 3)])["input_ids"][0].tolist()
    finally:
        st_model.max_seq_length = original
    assert len(long_ids) == 24
    assert long_ids[-len(suffix) :] == suffix  # the template's end survives truncation
    with pytest.raises(ValueError, match="max_seq_length must be a positive integer"):
        st_model.max_seq_length = 0


def test_prompts_map_onto_core_templates(st_model, tiny_embedder, monkeypatch):
    docs = ["Rockets reach orbit.", "Bread needs a long rise."]  # end in '.' and have no quotes: no clean-up
    monkeypatch.setattr(st_model, "prompts", {"query": "query: ", "document": "none", "raw": "{text}"})
    query_template = "query: " + PROMPTEOL.prefix + "{text}" + PROMPTEOL.suffix
    expected_query = tiny_embedder.encode(docs, prompt=query_template)
    np.testing.assert_allclose(st_model.encode_query(docs), expected_query, atol=1e-5)
    np.testing.assert_allclose(st_model.encode(docs, prompt_name="query"), expected_query, atol=1e-5)
    np.testing.assert_allclose(st_model.encode(docs, prompt="query: "), expected_query, atol=1e-5)
    np.testing.assert_allclose(st_model.encode_document(docs), tiny_embedder.encode(docs, prompt="none"), atol=1e-5)
    np.testing.assert_allclose(st_model.encode(docs, prompt_name="raw"), tiny_embedder.encode(docs, prompt="raw"),
                               atol=1e-5)
    assert not np.allclose(st_model.encode_query(docs), st_model.encode(docs), atol=1e-3)
    with pytest.raises(ValueError, match="exactly once"):
        st_model.encode(docs, prompt="{text} and {text}")


def test_normalize_embeddings_and_convert_to_tensor(st_model, texts):
    raw = st_model.encode(texts)
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-5)  # sum vectors are unit length
    unit = st_model.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(unit, raw, atol=1e-5)
    tensor = st_model.encode(texts, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor.cpu().numpy(), raw, atol=1e-6)


def test_precision_int8_and_binary(st_model, texts):
    raw = st_model.encode(texts)
    int8 = st_model.encode(texts, precision="int8")
    assert int8.dtype == np.int8 and int8.shape == raw.shape
    np.testing.assert_array_equal(int8, quantize_embeddings(raw, precision="int8"))
    binary = st_model.encode(texts, precision="binary")
    assert binary.dtype == np.int8 and binary.shape == (len(texts), int(np.ceil(raw.shape[1] / 8)))
    np.testing.assert_array_equal(binary, (np.packbits(raw > 0, axis=-1).astype(np.int16) - 128).astype(np.int8))


def test_similarity_is_the_moee_sum_score(st_model, tiny_embedder, texts):
    vectors = st_model.encode(texts)
    scores = st_model.similarity(vectors, vectors)
    np.testing.assert_allclose(scores.numpy(), tiny_embedder.similarity(vectors, vectors), atol=1e-5)
    np.testing.assert_allclose(np.diag(scores.numpy()), 1.0, atol=1e-5)  # (cos(HS) + cos(RW)) / 2 of a text with itself


def test_semantic_search_finds_the_exact_duplicate(st_model, texts):
    corpus = st_model.encode_document(texts, convert_to_tensor=True)
    queries = st_model.encode_query([texts[6], texts[2]], convert_to_tensor=True)
    hits = util.semantic_search(queries, corpus, top_k=3, score_function=util.dot_score)
    assert [h[0]["corpus_id"] for h in hits] == [6, 2]
    assert all(h[0]["score"] > h[1]["score"] for h in hits)


def test_token_embeddings_and_non_text_inputs_are_refused(st_model):
    with pytest.raises(KeyError, match="only 'sentence_embedding'"):
        st_model.encode(["a text"], output_value="token_embeddings")
    with pytest.raises(TypeError, match=r"texts\[1\] must be a string"):
        st_model.encode(["a text", ("a", "pair")])


def test_core_encode_token_ids_is_what_forward_runs(tiny_embedder, texts):
    # the core entry point this adapter added: the same channels as encode_parts, from tokenize()'s ids
    parts = tiny_embedder.encode_token_ids(tiny_embedder.tokenize(texts))
    reference = tiny_embedder.encode_parts(texts)
    np.testing.assert_array_equal(parts.hidden, reference.hidden)
    np.testing.assert_array_equal(parts.routing, reference.routing)
    with pytest.raises(ValueError, match=r"token_ids\[1\] is empty"):
        tiny_embedder.encode_token_ids([[1, 2], []])
    with pytest.raises(TypeError, match="token_ids must be a sequence"):
        tiny_embedder.encode_token_ids("1 2 3")
    with pytest.raises(TypeError, match=r"token_ids\[0\] must be a sequence"):
        tiny_embedder.encode_token_ids([5])
