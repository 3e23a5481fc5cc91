"""``/v1/rerank``: documents ranked by the model's own similarity to a query (MoEE's ``sum`` similarity is the
paper's scoring), answered in Cohere/Jina/vLLM's shape, or TEI's when the request used TEI's ``texts``."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from .schemas import RerankRequest

RERANK_ROUTES = ("/v1/rerank", "/rerank", "/v2/rerank")


def ranking(scores: np.ndarray, top_n: int | None) -> list[int]:
    """Document indices, best first (ties keep input order), at most ``top_n`` of them."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return order if top_n is None else order[:top_n]


def rerank_payload(request: RerankRequest, scores: np.ndarray, model: str, tokens: int) -> Any:
    """The answer: ``{"id", "model", "results": [{"index", "relevance_score", "document"?}], "usage"}``, or TEI's
    ``[{"index", "score", "text"?}]``."""
    order = ranking(scores, request.top_n)
    if request.tei:
        return [{"index": i, "score": float(scores[i]), **({"text": request.documents[i]} if request.return_documents
                                                            else {})} for i in order]
    results = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
        if request.return_documents:
            item["document"] = {"text": request.documents[i]}
        results.append(item)
    return {"id": f"rerank-{uuid.uuid4().hex}", "object": "rerank", "model": model, "results": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
