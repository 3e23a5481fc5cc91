"""Compact vectors: how well PCA-reduced MoEE vectors keep the full vectors' neighbours (top-k overlap).

A sum-mode embedder on the OLMoE-shaped model (random weights, ``olmoe-cpu`` by default: sum vectors of
256 + 4 x 64 = 512 dimensions) is calibrated, and its reduction fitted, on one synthetic corpus; the agreement
is measured on another, disjoint one: for every document, the overlap of its k nearest neighbours (dot product,
itself excluded) under reduced vectors with those under full vectors, averaged. Plain truncation to the same
size (what ``truncate_dim`` did before: the first hidden-state dimensions, no routing) is printed beside it.
Documents mix topic words (20 topics, each with its own vocabulary) and common Zipf-distributed words, so
neighbourhoods have structure. No timing: agreement does not depend on the machine.

    python benchmarks/compact.py --threads 1
    python benchmarks/compact.py --dims 32,64,128,256 --docs 1000 --fit-docs 600
"""

from __future__ import annotations

import _common as c
import numpy as np


def topical_corpus(n: int, vocab_size: int, seed: int, topics: int = 20, topic_words: int = 400) -> list[str]:
    rng = np.random.default_rng(seed)
    words = c.word_count(vocab_size)
    zipf = 1.0 / np.arange(1, words + 1)
    zipf /= zipf.sum()
    vocabularies = np.random.default_rng(12345).choice(words, size=(topics, topic_words), replace=False)
    texts = []
    for _ in range(n):
        length = int(np.clip(rng.lognormal(np.log(24), 0.5), 6, 120))
        topic = vocabularies[rng.integers(topics)]
        own = rng.random(length) < 0.6
        ids = np.where(own, topic[rng.integers(topic_words, size=length)], rng.choice(words, size=length, p=zipf))
        texts.append(" ".join(f"w{i}" for i in ids) + ".")
    return texts


def neighbours(vectors: np.ndarray, k: int) -> np.ndarray:
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    return np.argsort(-scores, axis=1)[:, :k]


def overlap(want: np.ndarray, got: np.ndarray) -> float:
    k = want.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(want, got, strict=True)]))


def main() -> int:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--dims", default="16,32,64,128,256", help="reduced sizes (default: %(default)s)")
    p.add_argument("--fit-docs", type=int, default=600, help="documents the statistics and PCA are fitted on")
    p.add_argument("--k", type=int, default=10, help="neighbours compared (default: %(default)s)")
    args = p.parse_args()
    s = c.setup(args)
    dims = [int(d) for d in args.dims.split(",")]
    n = args.docs or 1000
    model = c.build_model(s)
    tokenizer = c.build_tokenizer(model.config.vocab_size)
    from moee_plugins import MoEEmbedder

    emb = MoEEmbedder(model, tokenizer, mode="sum", device=s.device, dtype=s.dtype)
    c.emit(f"{c.describe(s).split(' | ')[0]} | shape {s.shape}, sum vectors of {emb.dim} dimensions | fitted on "
           f"{args.fit_docs} documents, measured on {n} others, top-{args.k} overlap")
    fit_texts = topical_corpus(args.fit_docs, model.config.vocab_size, seed=s.seed + 1)
    emb.calibrate(fit_texts, dimensions=dims, show_progress_bar=False)
    texts = topical_corpus(n, model.config.vocab_size, seed=s.seed)
    parts = emb.encode_parts(texts, show_progress_bar=False)
    full = emb.combine(parts)
    want = neighbours(full, args.k)
    ratio = np.cumsum(emb.reduction.explained_variance_ratio)
    rows, results = [], {}
    for d in dims:
        reduced = emb.combine(parts, dimensions=d)
        truncated = full[:, :d] / np.linalg.norm(full[:, :d], axis=1, keepdims=True)
        results[d] = {"pca": overlap(want, neighbours(reduced, args.k)),
                      "truncation": overlap(want, neighbours(truncated, args.k)),
                      "explained_variance": float(ratio[d - 1]), "bytes": d * 4}
        rows.append([d, f"{emb.dim / d:.0f}x", results[d]["explained_variance"], results[d]["pca"],
                     results[d]["truncation"]])
    c.emit(c.table(["dimensions", "smaller", "variance kept (fit set)", f"top-{args.k} overlap, PCA",
                    f"top-{args.k} overlap, truncation"], rows))
    summary = ", ".join(f"{d}: {results[d]['pca']:.2f} (truncation {results[d]['truncation']:.2f})" for d in dims)
    c.emit(f"SUMMARY compact: top-{args.k} overlap with full {emb.dim}-dim vectors: {summary}")
    c.emit_json({"benchmark": "compact", "dim": emb.dim, "k": args.k, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
