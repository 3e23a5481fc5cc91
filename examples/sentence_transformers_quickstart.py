"""A MoE LLM as a sentence-transformers model (MoEE): encode, search, save, reload.

Requirements: pip install ".[sentence-transformers]" in a clone of the repository (not on PyPI yet; see the README)
The default model, moee:olmoe (OLMoE-1B-7B), is downloaded from the Hugging Face Hub on first use
(about 14 GB) and is meant for a GPU. Pass --model with a local checkpoint directory (or another alias
or hub id) to run elsewhere, or --tiny to build a tiny random MoE offline (the numbers are then meaningless,
but every step runs in seconds on a CPU).

Usage:
    python examples/sentence_transformers_quickstart.py                       # moee:olmoe, GPU
    python examples/sentence_transformers_quickstart.py --model ./my-moe --mode concat --device cpu
    python examples/sentence_transformers_quickstart.py --tiny --save /tmp/my-moee
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

import moee_plugins  # noqa: F401  (makes the "moee:" scheme and saved MoEE models known to sentence-transformers)
from moee_plugins.sentence_transformers import install_hook

DOCUMENTS = [
    "The hockey team won the championship after a dramatic overtime goal.",
    "If the printer shows error 49, switch it off, wait thirty seconds and switch it on again.",
    "Bake the bread at two hundred degrees Celsius for forty minutes.",
    "The telescope found a faint galaxy behind the cluster.",
    "Vaccines train the immune system to recognise a virus.",
]
QUERIES = ["Who won the hockey final?", "My printer says error 49.", "How long does bread bake?"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="moee:olmoe", help="moee:<alias>, a hub id or a local MoE checkpoint")
    parser.add_argument("--tiny", action="store_true", help="build a tiny random MoE offline and use it")
    parser.add_argument("--mode", default="sum", choices=["hs", "rw", "concat", "sum"])
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: what sentence-transformers picks)")
    parser.add_argument("--save", default=None, help="where to save the model (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    install_hook()  # `import moee_plugins` already does this; calling it again is harmless

    from sentence_transformers import SentenceTransformer, util

    with tempfile.TemporaryDirectory() as tmp:
        model_ref = args.model
        if args.tiny:
            from moee_plugins.testing import build_tiny_moe

            model_ref = "moee:" + str(build_tiny_moe(Path(tmp) / "tiny-moe"))

        # MoEEmbedder options and from_pretrained arguments both go in model_kwargs; the tiny model lives in a
        # temporary folder, so its saved copy carries its weights (include_weights) instead of pointing there
        model = SentenceTransformer(model_ref, device=args.device,
                                    model_kwargs={"mode": args.mode, "include_weights": args.tiny})
        print(model)
        print(f"dimension {model.get_embedding_dimension()}, similarity: {model.similarity_fn_name}")

        docs = model.encode_document(DOCUMENTS, convert_to_tensor=True, show_progress_bar=True)
        queries = model.encode_query(QUERIES, convert_to_tensor=True)
        score = util.dot_score if model.similarity_fn_name == "dot" else util.cos_sim
        for query, hits in zip(QUERIES, util.semantic_search(queries, docs, top_k=2, score_function=score),
                               strict=True):
            print(f"\n{query}")
            for hit in hits:
                print(f"  {hit['score']:.3f}  {DOCUMENTS[hit['corpus_id']]}")

        binary = model.encode(DOCUMENTS, precision="binary")
        print(f"\nbinary embeddings: {binary.shape} {binary.dtype}")

        target = args.save or str(Path(tmp) / "my-moee")
        model.save(target)
        reloaded = SentenceTransformer(target, device=args.device)
        before = model.encode(DOCUMENTS)
        after = reloaded.encode(DOCUMENTS)
        print(f"saved to {target}; reload max abs difference: {np.abs(before - after).max():.3g}")


if __name__ == "__main__":
    main()
