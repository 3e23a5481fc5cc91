"""Semantic search over local text files with LlamaIndex and a MoE LLM as the embedding model (MoEE).

Requirements: pip install ".[llama-index]" in a clone of the repository (not on PyPI yet; see the README)
The default model, moee:olmoe (OLMoE-1B-7B), is downloaded from the Hugging Face Hub on first use
(about 14 GB) and is meant for a GPU. Pass --model with a local checkpoint directory (or another alias
or hub id) to run elsewhere; --device cpu works for small models. No LLM is needed: this only retrieves.

Usage:
    python examples/llama_index_retrieval.py notes/ faq.txt --query "how do I reset the printer?" --k 3
    python examples/llama_index_retrieval.py --model ./my-local-moe --device cpu    # built-in demo texts

Files are read with SimpleDirectoryReader (directories recursively, .txt only) and chunked by
LlamaIndex's default node parser.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from llama_index.core import Document, Settings, SimpleDirectoryReader, VectorStoreIndex

from moee_plugins.llama_index import MoEEmbedding

DEMO_TEXTS = [
    "The hockey team won the championship after a dramatic overtime goal.",
    "If the printer shows error 49, switch it off, wait thirty seconds and switch it on again.",
    "Bake the bread at two hundred degrees Celsius for forty minutes.",
    "The senate passed the budget bill late on Thursday night.",
    "Astronomers observed a new comet near the orbit of Jupiter.",
]
DEMO_QUERIES = ["how do I fix my printer?", "who won the hockey game?", "what did astronomers see?"]


def load_documents(paths: list[str]) -> list[Document]:
    if not paths:
        return [Document(text=text, metadata={"file_name": "demo"}) for text in DEMO_TEXTS]
    documents: list[Document] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            reader = SimpleDirectoryReader(input_dir=str(path), recursive=True, required_exts=[".txt"])
        elif path.is_file():
            reader = SimpleDirectoryReader(input_files=[str(path)])
        else:
            raise SystemExit(f"no such file or directory: {path}")
        documents.extend(reader.load_data())
    return documents


async def retrieve_all(index: VectorStoreIndex, queries: list[str], k: int) -> list:
    """The async retriever: the embedding forward passes run in worker threads, off the event loop."""
    retriever = index.as_retriever(similarity_top_k=k)
    return await asyncio.gather(*(retriever.aretrieve(query) for query in queries))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", help="text files or directories (default: a few demo sentences)")
    parser.add_argument("--query", action="append", help="a query (repeatable; default: demo queries)")
    parser.add_argument("--model", default="moee:olmoe", help="'moee:<alias>', hub id or local directory")
    parser.add_argument("--mode", default="sum", choices=["hs", "rw", "concat", "sum"])
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--k", type=int, default=3, help="results per query")
    parser.add_argument("--query-prompt", default=None, help="e.g. 'query: {text}' (default: the model's prompt)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    Settings.embed_model = MoEEmbedding(args.model, mode=args.mode, query_prompt=args.query_prompt,
                                        embed_batch_size=args.batch_size, model_kwargs={"device": args.device})
    documents = load_documents(args.paths)
    index = VectorStoreIndex.from_documents(documents, show_progress=True)
    print(f"indexed {len(documents)} documents with {args.model} ({args.mode})")

    queries = args.query or DEMO_QUERIES
    for query, hits in zip(queries, asyncio.run(retrieve_all(index, queries, args.k)), strict=True):
        print(f"\nquery: {query}")
        for rank, hit in enumerate(hits, start=1):
            text = hit.node.get_content().replace("\n", " ")
            print(f"  {rank}. {hit.score:.3f}  [{hit.node.metadata.get('file_name', '?')}]  {text[:100]}")


if __name__ == "__main__":
    main()
