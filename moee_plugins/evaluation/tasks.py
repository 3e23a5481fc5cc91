"""In-memory MTEB tasks (data given in Python, nothing downloaded) and an in-process task registry.

Each factory returns an ``mteb`` task instance whose ``load_data`` only wraps the lists it was given, so
``mteb.evaluate`` and ``moee eval`` run it offline exactly like a benchmark task. :func:`register_task` makes a
task reachable by name (``moee eval --tasks <name>``, :func:`moee_plugins.evaluation.run`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._extras import require

_REGISTRY: dict[str, Any] = {}


def _mteb() -> Any:
    return require("mteb", "mteb", feature="moee_plugins.evaluation")


def _datasets() -> Any:
    return require("datasets", "mteb", feature="moee_plugins.evaluation")


def _metadata(name: str, task_type: str, main_score: str, description: str | None) -> Any:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a task needs a non-empty name, got {name!r}")
    from mteb.abstasks.task_metadata import TaskMetadata

    return TaskMetadata(
        name=name, description=description or f"In-memory {task_type} task {name}.", type=task_type,
        main_score=main_score, dataset={"path": f"in-memory/{name}", "revision": "in-memory"},
        eval_splits=["test"], eval_langs=["eng-Latn"], category="t2t", modalities=["text"], bibtex_citation="",
    )


def _texts(name: str, values: Any) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of strings, got {type(values).__name__}")
    items = list(values)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"{name}[{i}] must be a string, got {type(item).__name__}")
    if not items:
        raise ValueError(f"{name} is empty")
    return items


def _same_length(**columns: Sequence[Any]) -> None:
    lengths = {key: len(value) for key, value in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns must have equal lengths, got {lengths}")


def _task(base: type, name: str, task_type: str, main_score: str, description: str | None,
          dataset: Any, **attributes: Any) -> Any:
    metadata = _metadata(name, task_type, main_score, description)

    def load_data(self: Any, num_proc: int | None = None, **kwargs: Any) -> None:
        self.dataset = dataset
        self.data_loaded = True

    cls = type(f"InMemory{task_type}Task", (base,), {"metadata": metadata, "load_data": load_data, **attributes})
    return cls()


def sts_task(name: str, sentences1: Sequence[str], sentences2: Sequence[str], scores: Sequence[float], *,
             min_score: float = 0, max_score: float = 5, description: str | None = None) -> Any:
    """Semantic similarity: Spearman correlation of the model's pair similarity with ``scores``."""
    s1, s2 = _texts("sentences1", sentences1), _texts("sentences2", sentences2)
    _same_length(sentences1=s1, sentences2=s2, scores=scores)
    from mteb.abstasks.sts import AbsTaskSTS

    ds = _datasets()
    data = ds.DatasetDict({"test": ds.Dataset.from_dict({"sentence1": s1, "sentence2": s2,
                                                        "score": [float(x) for x in scores]})})
    return _task(AbsTaskSTS, name, "STS", "cosine_spearman", description, data,
                 min_score=min_score, max_score=max_score)


def classification_task(name: str, train_texts: Sequence[str], train_labels: Sequence[int],
                        test_texts: Sequence[str], test_labels: Sequence[int], *, n_experiments: int = 10,
                        samples_per_label: int = 8, description: str | None = None) -> Any:
    """Classification: logistic regression trained on ``samples_per_label`` train vectors per label, ``n_experiments`` times."""
    train, test = _texts("train_texts", train_texts), _texts("test_texts", test_texts)
    _same_length(train_texts=train, train_labels=train_labels)
    _same_length(test_texts=test, test_labels=test_labels)
    from mteb.abstasks.classification import AbsTaskClassification

    ds = _datasets()
    data = ds.DatasetDict({
        "train": ds.Dataset.from_dict({"text": train, "label": [int(x) for x in train_labels]}),
        "test": ds.Dataset.from_dict({"text": test, "label": [int(x) for x in test_labels]}),
    })
    return _task(AbsTaskClassification, name, "Classification", "accuracy", description, data,
                 n_experiments=n_experiments, samples_per_label=samples_per_label)


def clustering_task(name: str, texts: Sequence[str], labels: Sequence[Any], *, description: str | None = None) -> Any:
    """Clustering: k-means with as many clusters as labels, scored by V-measure."""
    items = _texts("texts", texts)
    _same_length(texts=items, labels=labels)
    if len(set(labels)) < 2:
        raise ValueError("clustering needs at least two distinct labels")
    from mteb.abstasks.clustering_legacy import AbsTaskClusteringLegacy

    ds = _datasets()
    data = ds.DatasetDict({"test": ds.Dataset.from_dict({"sentences": [items], "labels": [list(labels)]})})
    return _task(AbsTaskClusteringLegacy, name, "Clustering", "v_measure", description, data)


def pair_classification_task(name: str, sentences1: Sequence[str], sentences2: Sequence[str],
                             labels: Sequence[int], *, description: str | None = None) -> Any:
    """Pair classification: average precision of the pair similarity for labels 1 (same) vs 0."""
    s1, s2 = _texts("sentences1", sentences1), _texts("sentences2", sentences2)
    _same_length(sentences1=s1, sentences2=s2, labels=labels)
    if set(int(x) for x in labels) - {0, 1}:
        raise ValueError("pair classification labels must be 0 or 1")
    from mteb.abstasks.pair_classification import AbsTaskPairClassification

    ds = _datasets()
    data = ds.DatasetDict({"test": ds.Dataset.from_dict({"sentence1": s1, "sentence2": s2,
                                                        "labels": [int(x) for x in labels]})})
    return _task(AbsTaskPairClassification, name, "PairClassification", "similarity_ap", description, data)


def reranking_task(name: str, samples: Sequence[tuple[str, Sequence[str], Sequence[str]]], *,
                   description: str | None = None) -> Any:
    """Reranking: each sample is ``(query, positives, negatives)``; candidates are ranked by similarity (MAP)."""
    if isinstance(samples, str) or not samples:
        raise ValueError("reranking needs a non-empty sequence of (query, positives, negatives)")
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    doc_ids: dict[str, str] = {}
    queries, relevant, top_ranked = [], {}, {}
    for i, sample in enumerate(samples):
        if not (isinstance(sample, (tuple, list)) and len(sample) == 3):
            raise ValueError(f"samples[{i}] must be (query, positives, negatives), got {sample!r:.80}")
        query, positives, negatives = sample
        query = _texts(f"samples[{i}] query", [query])[0]
        positives = _texts(f"samples[{i}] positives", positives)
        negatives = _texts(f"samples[{i}] negatives", negatives) if len(negatives) else []
        qid = f"q{i}"
        queries.append({"id": qid, "text": query})
        candidates = []
        relevant[qid] = {}
        for label, docs in ((1, positives), (0, negatives)):
            for doc in docs:
                did = doc_ids.setdefault(doc, f"d{len(doc_ids)}")
                candidates.append(did)
                relevant[qid][did] = max(label, relevant[qid].get(did, 0))
        top_ranked[qid] = list(dict.fromkeys(candidates))
    ds = _datasets()
    corpus = ds.Dataset.from_list([{"id": did, "text": doc, "title": ""} for doc, did in doc_ids.items()])
    split = RetrievalSplitData(queries=ds.Dataset.from_list(queries), corpus=corpus, relevant_docs=relevant,
                               top_ranked=top_ranked)
    return _task(AbsTaskRetrieval, name, "Reranking", "map_at_1000", description, {"default": {"test": split}})


def summarization_task(name: str, texts: Sequence[str], human_summaries: Sequence[Sequence[str]],
                       machine_summaries: Sequence[Sequence[str]], relevance: Sequence[Sequence[float]], *,
                       min_score: float = 0, max_score: float = 5, description: str | None = None) -> Any:
    """Summarization: Spearman correlation of each machine summary's best similarity to a human summary with
    its ``relevance``, per text."""
    items = _texts("texts", texts)
    _same_length(texts=items, human_summaries=human_summaries, machine_summaries=machine_summaries,
                 relevance=relevance)
    for i, (machine, scores) in enumerate(zip(machine_summaries, relevance, strict=True)):
        _texts(f"machine_summaries[{i}]", machine)
        _texts(f"human_summaries[{i}]", human_summaries[i])
        if len(machine) != len(scores):
            raise ValueError(f"machine_summaries[{i}] and relevance[{i}] differ in length")
    from mteb.abstasks.text.summarization import AbsTaskSummarization

    ds = _datasets()
    data = ds.DatasetDict({"test": ds.Dataset.from_dict({
        "text": items, "human_summaries": [list(h) for h in human_summaries],
        "machine_summaries": [list(m) for m in machine_summaries],
        "relevance": [[float(x) for x in r] for r in relevance],
    })})
    return _task(AbsTaskSummarization, name, "Summarization", "cosine_spearman", description, data,
                 min_score=min_score, max_score=max_score)


# ------------------------------------------------------------------ registry
def register_task(task: Any, *, overwrite: bool = False) -> Any:
    """Make ``task`` (an mteb task instance or class) reachable by its metadata name in this process."""
    if isinstance(task, type):
        task = task()
    name = getattr(getattr(task, "metadata", None), "name", None)
    if not name:
        raise TypeError(f"register_task needs an mteb task (with metadata.name), got {type(task).__name__}")
    if name in _REGISTRY and _REGISTRY[name] is not task and not overwrite:
        raise ValueError(f"a task named {name!r} is already registered; pass overwrite=True")
    _REGISTRY[name] = task
    return task


def unregister_task(name: str) -> None:
    """Forget a registered task (no error if absent)."""
    _REGISTRY.pop(name, None)


def registered_tasks() -> list[str]:
    """Names of the tasks registered in this process."""
    return sorted(_REGISTRY)


def get_task(name: str) -> Any:
    """A registered task by name, else MTEB's task of that name (which MTEB downloads when evaluated)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    try:
        return _mteb().get_task(name)
    except KeyError as exc:
        raise KeyError(
            f"unknown task {name!r}: neither registered in this process ({', '.join(registered_tasks()) or 'none'}) "
            f"nor an MTEB task name"
        ) from exc
