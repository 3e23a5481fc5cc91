"""Compact MoEE vectors in a persistent Chroma database, through LangChain and LlamaIndex, searched from a new process.

Requirements (in a clone): pip install ".[langchain,llama-index]" langchain-chroma llama-index-vector-stores-chroma
The default model, moee:olmoe (OLMoE-1B-7B), is downloaded from the Hugging Face Hub on first use (about 14 GB) and is
meant for a GPU. Pass --model with a local checkpoint directory (or another alias or hub id) to run elsewhere.

Usage:
    python examples/vector_databases.py index ./vector-db --dimensions 256       # fit, embed, persist
    python examples/vector_databases.py search ./vector-db --query "how do I fix my printer?"   # another process
    python examples/vector_databases.py index ./db --model ./my-local-moe --device cpu --dimensions 16

`index` fits the compact-vector reduction (`dimensions=`), saves the embedder beside the database
(`<db>/embedder`, so queries are embedded with the same settings), and writes the demo documents into two Chroma
collections: `langchain` (langchain-chroma) and `llama_index` (llama-index-vector-stores-chroma). `search` reloads
all three and prints the nearest documents of each query. Chroma's own default embedding function (an ONNX model it
would download) is never used: every vector comes from MoEE.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import chromadb
from chromadb.config import Settings

from moee_plugins import MoEEmbedder, calibration_sentences

DEMO_DOCUMENTS = {
    "hockey": "The hockey team won the championship after a dramatic overtime goal.",
    "printer": "If the printer shows error 49, switch it off, wait thirty seconds and switch it on again.",
    "bread": "Bake the bread at two hundred degrees Celsius for forty minutes.",
    "senate": "The senate passed the budget bill late on Thursday night.",
    "comet": "Astronomers observed a new comet near the orbit of Jupiter.",
    "garden": "Water the tomatoes in the morning so the leaves dry before night.",
}
DEMO_QUERIES = ["how do I fix my printer?", "who won the hockey game?", "what did astronomers see?"]
COLLECTIONS = ("langchain", "llama_index")
COSINE = {"hnsw:space": "cosine"}


def client(db: Path) -> chromadb.ClientAPI:
    """The database on disk (no telemetry: nothing leaves the machine)."""
    return chromadb.PersistentClient(path=str(db / "chroma"), settings=Settings(anonymized_telemetry=False))


def langchain_store(db: Path, embedder: MoEEmbedder, dimensions: int):
    from langchain_chroma import Chroma

    from moee_plugins.langchain import MoEEmbeddings

    embeddings = MoEEmbeddings(embedder=embedder, dimensions=dimensions)
    return Chroma(collection_name="langchain", embedding_function=embeddings, client=client(db),
                  collection_metadata=COSINE)


def llama_index(db: Path, embedder: MoEEmbedder, dimensions: int):
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.vector_stores.chroma import ChromaVectorStore

    from moee_plugins.llama_index import MoEEmbedding

    # embedding_function=None: the collection never embeds text itself (Chroma's default would download a model)
    collection = client(db).get_or_create_collection("llama_index", embedding_function=None, metadata=COSINE)
    store = ChromaVectorStore(chroma_collection=collection)
    embed_model = MoEEmbedding(embedder=embedder, dimensions=dimensions)
    return VectorStoreIndex.from_vector_store(store, embed_model=embed_model,
                                              storage_context=StorageContext.from_defaults(vector_store=store))


def index(args: argparse.Namespace) -> dict[str, int]:
    """Fit the reduction, save the embedder, write the documents into both collections."""
    from llama_index.core.schema import TextNode

    documents = DEMO_DOCUMENTS
    embedder = MoEEmbedder(args.model, mode=args.mode, device=args.device)
    # the PCA behind compact vectors: fitted on a sample of texts like the corpus (here, the built-in sentences)
    embedder.fit_reduction(list(calibration_sentences()[: max(4 * args.dimensions, 64)]) + list(documents.values()),
                           args.dimensions)
    embedder.save_pretrained(args.db / "embedder")
    ids, texts = list(documents), list(documents.values())
    langchain_store(args.db, embedder, args.dimensions).add_texts(texts, ids=ids, metadatas=[{"key": i} for i in ids])
    llama_index(args.db, embedder, args.dimensions).insert_nodes(
        [TextNode(id_=key, text=text) for key, text in documents.items()])  # no metadata: it would be embedded too
    counts = {name: client(args.db).get_collection(name).count() for name in COLLECTIONS}
    print(f"indexed {len(documents)} documents as {args.dimensions}-dimensional {args.mode} vectors: {counts}")
    return counts


def search(args: argparse.Namespace) -> list[dict]:
    """Reload the embedder and both stores (nothing kept in memory from `index`), and answer the queries."""
    embedder = MoEEmbedder.from_pretrained(args.db / "embedder", device=args.device)
    dimensions = embedder.reduction.dimensions[0] if args.dimensions is None else args.dimensions
    lc = langchain_store(args.db, embedder, dimensions)
    retriever = llama_index(args.db, embedder, dimensions).as_retriever(similarity_top_k=args.k)
    results = []
    for query in args.query or DEMO_QUERIES:
        found = {"langchain": [d.id for d in lc.similarity_search(query, k=args.k)],
                 "llama_index": [n.node.node_id for n in retriever.retrieve(query)]}
        results.append({"query": query, **found})
        if args.json:
            print(json.dumps(results[-1]))
        else:
            print(f"\nquery: {query}")
            for name, keys in found.items():
                print(f"  {name:12s} " + ", ".join(keys))
    return results


def main(argv: list[str] | None = None) -> list[dict] | dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("index", "search"):
        command = sub.add_parser(name)
        command.add_argument("db", type=Path, help="the database folder")
        command.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
        command.add_argument("--dimensions", type=int, default=None if name == "search" else 256,
                             help="compact vector size (index: default %(default)s; search: the saved reduction's)")
    index_parser, search_parser = sub.choices["index"], sub.choices["search"]
    index_parser.add_argument("--model", default="moee:olmoe", help="'moee:<alias>', hub id or local directory")
    index_parser.add_argument("--mode", default="sum", choices=["hs", "rw", "concat", "sum"])
    search_parser.add_argument("--query", action="append", help="a query (repeatable; default: a few demo queries)")
    search_parser.add_argument("--k", type=int, default=3, help="results per query")
    search_parser.add_argument("--json", action="store_true", help="one JSON line per query")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return index(args) if args.command == "index" else search(args)


if __name__ == "__main__":
    main()
