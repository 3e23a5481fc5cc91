"""Whole long documents with MoEE: ``long_texts="chunk"`` versus the default truncation.

Requirements: pip install moee-plugins
The default model, moee:olmoe (OLMoE-1B-7B), is downloaded from the Hugging Face Hub on first use
(about 14 GB) and is meant for a GPU. Pass --model with a local checkpoint directory (or another alias
or hub id) to run elsewhere, or set MOEE_EXAMPLE_MODEL; --device cpu works for small models.

Usage:
    python examples/long_documents.py                               # a built-in long report
    python examples/long_documents.py --file paper.txt --query "what did the authors conclude?"
    python examples/long_documents.py --max-length 256 --overlap 32 --device cpu --model ./my-local-moe

A long document is cut at --max-length tokens by default, so whatever comes after (here: the printer fix
at the end of a long hockey report) never reaches its vector. With long_texts="chunk" the document is
split into windows of --max-length tokens, each wrapped in the prompt, and the windows' raw parts are pooled
into its one vector (docs/concepts.md, "Long texts"). The script prints, for both settings, the tokens and
windows the document took, the time, and where the document ranks for the query.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np

from moee_plugins import MoEEmbedder

MODEL_ENV = "MOEE_EXAMPLE_MODEL"
SHORT_DOCUMENTS = [
    "If the printer shows error 49, switch it off, wait thirty seconds and switch it on again.",
    "Bake the bread at two hundred degrees Celsius for forty minutes.",
    "Astronomers observed a new comet near the orbit of Jupiter.",
]
QUERY = "the office printer shows error 49 and jams paper: how do I fix it?"


def built_in_report(paragraphs: int = 40) -> str:
    """A long report whose last paragraph, and only that one, is about the printer."""
    body = [f"Game {i}: the hockey team played a hard match on the ice, the goalie stopped {10 + i} shots and the "
            f"coach praised the defence after the final whistle." for i in range(paragraphs)]
    body.append("Finally, a note for the office: when the printer shows error 49 or jams paper, switch it off, wait "
                "thirty seconds, remove the jammed sheet and switch it on again.")
    return "\n\n".join(body)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get(MODEL_ENV, "moee:olmoe"),
                        help=f"alias, hub id or directory (default: ${MODEL_ENV}, else moee:olmoe)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when present)")
    parser.add_argument("--file", default=None, help="a text file to use as the long document")
    parser.add_argument("--query", default=QUERY)
    parser.add_argument("--max-length", type=int, default=512, help="tokens per window, prompt included")
    parser.add_argument("--overlap", type=int, default=0, help="tokens each window repeats from the previous one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    document = Path(args.file).read_text(encoding="utf-8") if args.file else built_in_report()
    documents = [document, *SHORT_DOCUMENTS]
    truncating = MoEEmbedder(args.model, device=args.device, max_length=args.max_length)
    truncating.ensure_statistics()  # one calibration, shared by both settings (chunking pools raw parts)
    chunking = MoEEmbedder.from_config(truncating.config, model=truncating.model, tokenizer=truncating.tokenizer,
                                       long_texts="chunk", chunk_overlap=args.overlap)
    total_tokens = len(truncating.tokenizer(document, add_special_tokens=False)["input_ids"])
    print(f"long document: {len(document):,} characters, {total_tokens:,} tokens; max_length={args.max_length}")

    results: dict[str, dict[str, float]] = {}
    vectors: dict[str, np.ndarray] = {}
    query = truncating.encode(args.query)
    for name, embedder in (("truncate", truncating), ("chunk", chunking)):
        started = time.perf_counter()
        parts = embedder.encode_parts(documents, show_progress_bar=False)
        seconds = time.perf_counter() - started
        vectors[name] = embedder.combine(parts)
        scores = embedder.similarity(query[None, :], vectors[name])[0]
        rank = int((scores > scores[0]).sum()) + 1
        results[name] = {"tokens": int(parts.num_tokens[0]), "seconds": seconds, "rank": rank,
                         "score": float(scores[0])}
        print(f"{name:>8}: the document took {parts.num_tokens[0]:>7,} tokens in the model, {seconds:6.2f} s; "
              f"for the query it ranks {rank} of {len(documents)} (score {scores[0]:.3f})")
    change = float(np.linalg.norm(vectors["chunk"][0] - vectors["truncate"][0]))
    results["difference"] = {"l2": change}
    print(f"the long document's vector moved by {change:.3f} (L2) when its whole text was read; "
          f"the short documents' by {float(np.abs(vectors['chunk'][1:] - vectors['truncate'][1:]).max()):.1e}")
    return results


if __name__ == "__main__":
    main()
