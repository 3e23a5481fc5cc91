"""Every BERTopic feature that calls the embedding model, run through MoEEBackend on the tiny model."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

pytest.importorskip("bertopic", reason="the bertopic extra is not installed")

from bertopic import BERTopic
from bertopic.representation import KeyBERTInspired, MaximalMarginalRelevance
from sklearn.metrics.pairwise import cosine_similarity

from moee_plugins.bertopic import BACKEND_CONFIG, MoEEBackend, load_topic_model, save_topic_model, topics_over_time

N_TOPICS = 5  # the synthetic corpus's vocabularies (conftest.VOCABULARIES)


@pytest.fixture(autouse=True)
def _corpus_shape(n_topics: int) -> None:
    assert n_topics == N_TOPICS


class RecordingBackend(MoEEBackend):
    """Remembers every text it embeds and the prompt it used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[list[str], Any]] = []

    def _encode(self, texts, verbose, prompt):
        self.calls.append((list(texts), prompt))
        return super()._encode(texts, verbose, prompt)


def valid_topics(model: BERTopic) -> set[int]:
    return set(model.get_topic_info().Topic)


def test_fit_transform_embeds_through_the_backend(make_model):
    model = make_model(use_embeddings=False, n=80)
    assert len(model.topics_) == 80
    assert set(model.topics_) == set(range(N_TOPICS))
    assert model.get_topic_info().Count.sum() == 80
    # the backend's embeddings are exactly the precomputed ones: same clustering, same topics
    assert model.topics_ == make_model(n=80).topics_


def test_transform_reproduces_training_topics_and_handles_new_documents(fitted, docs, new_docs):
    topics, _ = fitted.transform(docs[:40])
    assert list(topics) == fitted.topics_[:40]  # embeddings do not depend on the batch
    new_topics, _ = fitted.transform(new_docs)
    assert len(new_topics) == len(new_docs)
    assert set(new_topics) <= valid_topics(fitted)
    single, _ = fitted.transform(new_docs[0])
    assert list(single) == [new_topics[0]]


def test_keybert_inspired_embeds_candidate_words_with_the_document_prompt(embedder, make_model, all_words):
    backend = RecordingBackend(embedder)
    model = make_model(embedding_model=backend,
                       representation_model=KeyBERTInspired(top_n_words=5, nr_repr_docs=3, nr_candidate_words=20))
    words_seen = {text for texts, _ in backend.calls for text in texts if text and " " not in text}
    assert words_seen and words_seen <= all_words  # candidate words went through our backend ...
    assert all(prompt is None for _, prompt in backend.calls)  # ... with the documents' own template
    for topic in range(N_TOPICS):
        words = [word for word, _ in model.get_topic(topic) if word]  # KeyBERTInspired pads with ""
        assert 0 < len(words) <= 5 and set(words) <= all_words
        scores = [score for _, score in model.get_topic(topic)]
        assert scores == sorted(scores, reverse=True)


def test_maximal_marginal_relevance_uses_embed_words(embedder, make_model, all_words):
    backend = RecordingBackend(embedder, word_prompt="none")
    model = make_model(embedding_model=backend, top_n_words=8,
                       representation_model=MaximalMarginalRelevance(diversity=0.5, top_n_words=4))
    assert backend.calls and all(prompt == backend.word_prompt for _, prompt in backend.calls)
    for topic in range(N_TOPICS):
        words = [word for word, _ in model.get_topic(topic)]
        assert len(words) == 4 and len(set(words)) == 4 and set(words) <= all_words


@pytest.mark.parametrize("query", ["hockey goalie puck", "rocket launch"])
def test_find_topics_ranks_by_cosine_to_the_backend_query_vector(fitted, backend, query):
    topics, similarities = fitted.find_topics(query, top_n=N_TOPICS)
    assert sorted(topics) == sorted(valid_topics(fitted))
    assert similarities == sorted(similarities, reverse=True)
    expected = cosine_similarity(backend.embed_words([query]), fitted.topic_embeddings_)[0]
    order = sorted(valid_topics(fitted))
    np.testing.assert_allclose(similarities, [expected[order.index(t)] for t in topics], rtol=1e-5)
    top, _ = fitted.find_topics(query, top_n=2)
    assert top == topics[:2]


def test_zero_shot_topic_list(make_model, backend, embeddings, docs):
    labels = ["ice hockey and skating", "rockets and outer space"]
    similarity = cosine_similarity(embeddings, backend.embed(labels)).max(axis=1)
    threshold = float(np.quantile(similarity, 0.8))  # about a fifth of the documents match a label
    model = make_model(zeroshot_topic_list=labels, zeroshot_min_similarity=threshold)
    assigned = similarity >= threshold
    info = model.get_topic_info()
    zero_shot_rows = info[info.Name.isin(labels)]
    assert len(zero_shot_rows) >= 1 and zero_shot_rows.Count.sum() == assigned.sum()
    names = dict(zip(info.Topic, info.Name, strict=True))
    assert all(names[t] in labels for t, a in zip(model.topics_, assigned, strict=True) if a)
    assert len(model.topics_) == len(docs)


def test_guided_topic_modeling_with_seed_words(make_model, docs, fitted):
    seeds = [["hockey", "puck"], ["rocket", "orbit"]]
    model = make_model(seed_topic_list=seeds)
    assert len(model.topics_) == len(docs) and set(model.topics_) <= valid_topics(model)
    # the seeds had an effect: every seed word scores higher in its topic than in an unseeded fit
    unseeded = make_model()

    def score(topic_model, word):
        return max(dict(words).get(word, 0.0) for words in topic_model.get_topics().values())

    for word in ("hockey", "puck", "rocket", "orbit"):
        assert score(model, word) > score(unseeded, word) > 0


def test_merge_reduce_and_delete_topics_keep_the_model_usable(make_model, docs, new_docs, backend):
    model = make_model(representation_model=KeyBERTInspired(top_n_words=5, nr_repr_docs=3, nr_candidate_words=20))
    sizes = model.get_topic_info().set_index("Topic").Count
    model.merge_topics(docs, [0, 1])
    info = model.get_topic_info()
    assert len(info) == N_TOPICS - 1 and info.Count.sum() == len(docs)
    assert sizes[0] + sizes[1] in set(info.Count)
    assert model.topic_embeddings_.shape == (N_TOPICS - 1, backend.dim)

    model.reduce_topics(docs, nr_topics=3)
    assert set(model.topics_) == {0, 1, 2} and len(model.topics_) == len(docs)
    topics, _ = model.transform(new_docs)
    assert len(topics) == len(new_docs) and set(topics) <= {0, 1, 2}

    model.delete_topics([2])  # deep-copies the whole model, backend included
    assert model.embedding_model is not None and -1 in set(model.topics_)
    outliers = [i for i, t in enumerate(model.topics_) if t == -1]
    new = model.reduce_outliers(docs, model.topics_, strategy="embeddings")  # embeds the outliers again
    assert -1 not in set(new) and len(new) == len(docs)
    vectors = backend.embed([docs[i] for i in outliers])
    expected = cosine_similarity(vectors, model.topic_embeddings_[1:]).argmax(axis=1)  # row 0 is the outlier topic
    assert [new[i] for i in outliers] == expected.tolist()


def test_save_and_load_safetensors_reattaches_the_backend(fitted, backend, new_docs, tmp_path):
    path = save_topic_model(fitted, tmp_path / "model")
    assert "embedding_model" not in json.loads((path / "config.json").read_text())  # nothing to fetch by name
    assert json.loads((path / BACKEND_CONFIG).read_text()) == backend.config

    loaded = load_topic_model(path)  # backend rebuilt from moee_backend.json
    assert isinstance(loaded.embedding_model, MoEEBackend)
    assert loaded.embedding_model.embedder is not backend.embedder
    again = BERTopic.load(str(path), embedding_model=backend)  # BERTopic's own API, backend passed in
    assert again.embedding_model is backend

    for model in (loaded, again):
        assert model.get_topic_info().drop(columns="Representative_Docs").equals(
            fitted.get_topic_info().drop(columns="Representative_Docs"))
        np.testing.assert_allclose(model.topic_embeddings_, fitted.topic_embeddings_, rtol=1e-6)
        # without UMAP/HDBSCAN a loaded model predicts by cosine to the topic embeddings
        topics, _ = model.transform(new_docs)
        expected = cosine_similarity(backend.embed(new_docs), fitted.topic_embeddings_).argmax(axis=1)
        assert list(topics) == expected.tolist()
        assert model.find_topics("rocket launch", top_n=3)[0] == fitted.find_topics("rocket launch", top_n=3)[0]


def test_load_topic_model_errors(fitted, tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved topic model"):
        load_topic_model(tmp_path / "missing")
    fitted.save(tmp_path / "plain", serialization="safetensors", save_embedding_model=True)  # BERTopic's own save
    assert "embedding_model" not in json.loads((tmp_path / "plain" / "config.json").read_text())  # nothing recorded
    with pytest.raises(FileNotFoundError, match=r"moee_backend\.json"):  # ... and ours says what is missing
        load_topic_model(tmp_path / "plain")
    with pytest.raises(TypeError, match="MoEEBackend"):
        save_topic_model(BERTopic(), tmp_path / "x")


def test_bertopic_own_save_with_a_moee_folder_reloads_the_model(fitted, embedder, new_docs, tmp_path):
    from sentence_transformers import SentenceTransformer

    from moee_plugins.sentence_transformers import MoEEModule

    folder = tmp_path / "moee"
    SentenceTransformer(modules=[MoEEModule(embedder)]).save(str(folder))
    assert not hasattr(fitted.embedding_model, "_hf_model")  # BERTopic's probe: an AttributeError, not a TypeError
    path = tmp_path / "topics"
    fitted.save(path, serialization="safetensors", save_embedding_model=f"moee:{folder}")  # as docs/bertopic.md says
    assert json.loads((path / "config.json").read_text())["embedding_model"] == f"moee:{folder}"
    assert (path / "topics.json").is_file()

    loaded = BERTopic.load(str(path))  # BERTopic's own load: SentenceTransformer("moee:<folder>")
    expected = fitted.embedding_model.embed(new_docs)
    np.testing.assert_allclose(loaded.embedding_model.embed(new_docs), expected, rtol=1e-5, atol=1e-6)
    topics, _ = loaded.transform(new_docs)
    assert list(topics) == cosine_similarity(expected, fitted.topic_embeddings_).argmax(axis=1).tolist()


def test_encode_is_embed_under_the_name_bertopic_recipes_call(backend, new_docs):
    vectors = backend.encode(new_docs, show_progress_bar=False)
    assert vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, backend.embed(new_docs))
    np.testing.assert_allclose(backend.encode(new_docs[0]), vectors[0], rtol=1e-5, atol=1e-6)  # one text: one vector


def test_pickle_save_and_load_gives_identical_transform(fitted, new_docs, tmp_path):
    path = tmp_path / "model.pickle"
    fitted.save(path, serialization="pickle")
    loaded = BERTopic.load(str(path))
    assert isinstance(loaded.embedding_model, MoEEBackend)
    expected, _ = fitted.transform(new_docs)
    topics, _ = loaded.transform(new_docs)
    assert list(topics) == list(expected)


def test_a_sentence_transformers_model_on_the_adapter_works_directly(tiny_model_dir, embedder, backend, docs,
                                                                    new_docs, fast_cpu):
    """BERTopic wraps a SentenceTransformer in its own backend; a MoEE one must pass that path too."""
    adapter = pytest.importorskip(
        "moee_plugins.sentence_transformers",
        reason="moee_plugins.sentence_transformers (the sentence-transformers adapter) is not available",
    )
    from bertopic.backend import BaseEmbedder
    from bertopic.backend._utils import select_backend
    from sentence_transformers import SentenceTransformer
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    from moee_plugins import MoEEmbedder

    embedder = MoEEmbedder(str(tiny_model_dir), mode="sum", device="cpu", statistics=embedder.statistics,
                           model_kwargs=fast_cpu)
    module = adapter.MoEEModule(embedder)
    st_model = SentenceTransformer(modules=[module], similarity_fn_name=module.similarity_fn_name, device="cpu")
    wrapped = select_backend(st_model)
    assert isinstance(wrapped, BaseEmbedder) and wrapped.embedding_model is st_model
    np.testing.assert_allclose(wrapped.embed(docs[:4]), backend.embed(docs[:4]), rtol=1e-5, atol=1e-6)

    model = BERTopic(embedding_model=st_model, umap_model=PCA(n_components=8, random_state=0),
                     hdbscan_model=KMeans(n_clusters=N_TOPICS, n_init=10, random_state=0),
                     representation_model=KeyBERTInspired(top_n_words=5, nr_repr_docs=3, nr_candidate_words=20))
    topics, _ = model.fit_transform(docs[:80])
    assert len(topics) == 80 and set(topics) == set(range(N_TOPICS))
    new_topics, _ = model.transform(new_docs)
    assert len(new_topics) == len(new_docs) and set(new_topics) <= set(range(N_TOPICS))
    found, similarities = model.find_topics("rocket launch", top_n=2)
    assert len(found) == 2 and similarities[0] >= similarities[1]


def test_a_saved_topic_model_never_switches_remote_code_on(fitted, hostile_model, tmp_path):
    hostile, marker = hostile_model
    path = save_topic_model(fitted, tmp_path / "model")
    config = json.loads((path / BACKEND_CONFIG).read_text())
    config["embedder"].update(model=str(hostile), trust_remote_code=True)  # what a hostile sender would write
    (path / BACKEND_CONFIG).write_text(json.dumps(config))
    loaded = load_topic_model(path)
    assert not marker.exists() and loaded.embedding_model.embedder.trust_remote_code is False


@pytest.mark.parametrize("datetime_format", [None, "%Y-%m-%d"])
def test_topics_over_time_takes_string_timestamps(fitted, docs, datetime_format):
    import pandas as pd

    days = pd.date_range("2024-01-01", periods=len(docs), freq="D")
    strings = [day.strftime("%Y-%m-%d") for day in days]
    by_strings = topics_over_time(fitted, docs, strings, datetime_format=datetime_format, nr_bins=4)
    by_dates = topics_over_time(fitted, docs, list(days.to_pydatetime()), nr_bins=4)
    assert int(by_strings["Frequency"].sum()) == len(docs)  # every document lands in exactly one bin
    assert set(by_strings["Topic"]) == set(fitted.topics_)
    pd.testing.assert_frame_equal(by_strings.reset_index(drop=True), by_dates.reset_index(drop=True))
