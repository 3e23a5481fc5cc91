"""Topic modelling of 20 Newsgroups with BERTopic and a MoE LLM as the embedding model (MoEE).

Needs the INTERNET and a GPU:
- scikit-learn's fetch_20newsgroups downloads the corpus (about 14 MB) on first use;
- the default model, moee:olmoe (OLMoE-1B-7B), is downloaded from the Hugging Face Hub on first use
  (about 14 GB) and embedding the ~18,000 posts is meant for a CUDA GPU (about 10 minutes on one
  recent GPU in bfloat16; hours on a CPU). Use --limit for a quick try.

Requirements: pip install ".[bertopic]" in a clone of the repository (not on PyPI yet; see the README)

Usage:
    python examples/bertopic_20newsgroups.py                          # everything, writes ./20newsgroups-topics/
    python examples/bertopic_20newsgroups.py --limit 2000 --mode concat --out runs/ng-concat
    python examples/bertopic_20newsgroups.py --model moee:qwen-moe --batch-size 16

The embeddings are computed once (length-sorted batches, with a progress bar) and cached in
OUT/embeddings.npy with the embedder's configuration; a second run reuses them and only refits the
topic model. It prints the topic table and how well topics match the newsgroups (NMI), and writes
the topic map and the bar chart as HTML into OUT.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from bertopic import BERTopic
from bertopic.representation import KeyBERTInspired
from bertopic.vectorizers import ClassTfidfTransformer
from hdbscan import HDBSCAN
from sklearn.datasets import fetch_20newsgroups
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.metrics import normalized_mutual_info_score
from umap import UMAP

from moee_plugins import MoEEmbedder
from moee_plugins.bertopic import MoEEBackend, save_topic_model


def load_corpus(limit: int | None, seed: int) -> tuple[list[str], list[str]]:
    """The posts (headers, signatures and quoted replies removed; empty posts dropped) and their newsgroup."""
    data = fetch_20newsgroups(subset="all", remove=("headers", "footers", "quotes"))
    pairs = [(doc, data.target_names[t]) for doc, t in zip(data.data, data.target, strict=True) if doc.strip()]
    logging.info("20 Newsgroups: %d posts, %d left after dropping empty ones", len(data.data), len(pairs))
    if limit is not None and limit < len(pairs):
        keep = np.random.default_rng(seed).choice(len(pairs), size=limit, replace=False)
        pairs = [pairs[i] for i in sorted(keep)]
    return [doc for doc, _ in pairs], [label for _, label in pairs]


def embed_once(embedder: MoEEmbedder, docs: list[str], cache: Path) -> np.ndarray:
    """MoEE embeddings of ``docs``, from ``cache`` when it was made with the same embedder and corpus."""
    config_path = cache.with_suffix(".json")
    wanted = {"embedder": embedder.config, "documents": len(docs)}
    wanted["embedder"].pop("statistics")  # fixed by the built-in calibration: same model, same statistics
    if cache.is_file() and config_path.is_file():
        saved = json.loads(config_path.read_text())
        saved["embedder"].pop("statistics", None)
        if saved == wanted:
            logging.info("reusing the embeddings cached in %s", cache)
            return np.load(cache)
    # encode() plans length-sorted batches (little padding) and shows a progress bar
    embeddings = embedder.encode(docs, show_progress_bar=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, embeddings)
    config_path.write_text(json.dumps(wanted, indent=2))
    return embeddings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="moee:olmoe", help="moee:<alias>, hub id or local directory")
    parser.add_argument("--mode", default="sum", choices=["hs", "rw", "concat", "sum"])
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512, help="tokens per post, prompt included")
    parser.add_argument("--limit", type=int, default=None, help="use a random sample of this many posts")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path("20newsgroups-topics"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    docs, newsgroups = load_corpus(args.limit, args.seed)
    embedder = MoEEmbedder(args.model, mode=args.mode, device=args.device, batch_size=args.batch_size,
                           max_length=args.max_length)
    embeddings = embed_once(embedder, docs, args.out / "embeddings.npy")

    topic_model = BERTopic(
        embedding_model=MoEEBackend(embedder),  # used again for KeyBERTInspired's words and for queries
        umap_model=UMAP(n_neighbors=15, n_components=5, min_dist=0.0, metric="cosine", random_state=args.seed),
        hdbscan_model=HDBSCAN(min_cluster_size=15, metric="euclidean", cluster_selection_method="eom",
                              prediction_data=True),
        vectorizer_model=CountVectorizer(stop_words="english"),
        ctfidf_model=ClassTfidfTransformer(),
        representation_model=KeyBERTInspired(),
        verbose=True,
    )
    topics, _ = topic_model.fit_transform(docs, embeddings)

    info = topic_model.get_topic_info()
    print(info[["Topic", "Count", "Name"]].to_string(index=False, max_rows=60))
    clustered = [i for i, topic in enumerate(topics) if topic != -1]
    nmi = normalized_mutual_info_score([newsgroups[i] for i in clustered], [topics[i] for i in clustered])
    print(f"\n{len(info) - 1} topics; {len(docs) - len(clustered)} of {len(docs)} posts are outliers; "
          f"NMI with the 20 newsgroups (clustered posts): {nmi:.3f}")
    for query in ("space shuttle launch", "gun control", "graphics card drivers"):
        found, similarity = topic_model.find_topics(query, top_n=1)
        print(f"find_topics({query!r}) -> topic {found[0]} ({similarity[0]:.2f}): {topic_model.topic_labels_[found[0]]}")

    topic_model.visualize_topics().write_html(args.out / "topic_map.html")
    topic_model.visualize_barchart(top_n_topics=20).write_html(args.out / "topic_barchart.html")
    save_topic_model(topic_model, args.out / "model")
    print(f"\nwrote topic_map.html, topic_barchart.html and model/ to {args.out}")


if __name__ == "__main__":
    main()
