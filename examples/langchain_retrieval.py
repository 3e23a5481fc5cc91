"""Semantic search over local text files with LangChain and a MoE LLM as the embedding model (MoEE).

Requirements: pip install ".[langchain]" in a clone of the repository (not on PyPI yet; see the README)
The default model, moee:olmoe (OLMoE-1B-7B), is downloaded from the Hugging Face Hub on first use
(about 14 GB) and is meant for a GPU. Pass --model with a local checkpoint directory (or another alias
or hub id) to run elsewhere; --device cpu works for small models.

Usage:
    python examples/langchain_retrieval.py notes/ faq.txt --query "how do I reset the printer?" --k 3
    python examples/langchain_retrieval.py --model ./my-local-moe --device cpu    # built-in demo texts

Every .txt file (directories are searched recursively) is split into paragraphs at blank lines;
each paragraph becomes one document.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore

from moee_plugins.langchain import MoEEmbeddings

DEMO_TEXTS = [
    "The hockey team won the championship after a dramatic overtime goal.",
    "If the printer shows error 49, switch it off, wait thirty seconds and switch it on again.",
    "Bake the bread at two hundred degrees Celsius for forty minutes.",
    "The senate passed the budget bill late on Thursday night.",
    "Astronomers observed a new comet near the orbit of Jupiter.",
]
DEMO_QUERIES = ["how do I fix my printer?", "who won the hockey game?", "what did astronomers see?"]


def text_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(path.rglob("*.txt")))
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"no such file or directory: {path}")
    if not files:
        raise SystemExit(f"no .txt files found in {paths}")
    return files


def load_documents(paths: list[str]) -> list[Document]:
    """One document per paragraph of every text file, with its source and paragraph number."""
    if not paths:
        return [Document(page_content=text, metadata={"source": "demo", "paragraph": i})
                for i, text in enumerate(DEMO_TEXTS)]
    documents = []
    for file in text_files(paths):
        paragraphs = [p.strip() for p in file.read_text(encoding="utf-8").split("\n\n")]
        documents.extend(Document(page_content=p, metadata={"source": str(file), "paragraph": i})
                         for i, p in enumerate(paragraphs) if p)
    return documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", help="text files or directories (default: a few demo sentences)")
    parser.add_argument("--query", action="append", help="a query (repeatable; default: demo queries)")
    parser.add_argument("--model", default="moee:olmoe", help="'moee:<alias>', hub id or local directory")
    parser.add_argument("--mode", default="sum", choices=["hs", "rw", "concat", "sum"])
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--k", type=int, default=3, help="results per query")
    parser.add_argument("--query-prompt", default=None, help="e.g. 'query: {text}' (default: the model's prompt)")
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    documents = load_documents(args.paths)
    embeddings = MoEEmbeddings(model=args.model, mode=args.mode, query_prompt=args.query_prompt,
                               batch_size=args.batch_size, model_kwargs={"device": args.device},
                               show_progress=True)
    store = InMemoryVectorStore(embedding=embeddings)
    store.add_documents(documents)
    print(f"indexed {len(documents)} paragraphs with {args.model} ({args.mode}, {embeddings.embedder.dim} dims)")

    for query in args.query or DEMO_QUERIES:
        print(f"\nquery: {query}")
        for rank, (doc, score) in enumerate(store.similarity_search_with_score(query, k=args.k), start=1):
            where = f"{doc.metadata['source']}#{doc.metadata['paragraph']}"
            print(f"  {rank}. {score:.3f}  [{where}]  {doc.page_content[:100]}")


if __name__ == "__main__":
    main()
