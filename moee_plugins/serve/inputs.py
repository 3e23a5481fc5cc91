"""What the server does to inputs before tokenising them: token ids become the text they decode to (so they meet
the prompt exactly as that text would), and ``truncate: false`` refuses an input longer than ``max_length``.
"""

from __future__ import annotations

from typing import Any

from ..core.prompts import PromptTemplate
from .schemas import ApiError

# characters of a text that are tokenised to count it for a refusal: work stays bounded by max_length; past it the
# count is a lower bound ("at least")
_COUNT_CHARS_PER_TOKEN = 64


def vocabulary_size(embedder: Any) -> int:
    """How many token ids the embedder's tokenizer knows (added tokens included)."""
    return len(embedder.tokenizer)


def texts_of(embedder: Any, items: list[str | list[int]]) -> list[str]:
    """Each input as text: strings as given; token ids decoded by the model's tokenizer, special tokens (BOS,
    EOS, padding) skipped. Ids past ``max_length`` are dropped first: work per input stays bounded, and a text
    that long is cut inside the prompt anyway (``truncate: false`` refuses such an input before this)."""
    limit = embedder.max_length
    texts: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            texts.append(item)
            continue
        text = embedder.tokenizer.decode(item[:limit], skip_special_tokens=True)
        if not text:
            raise ApiError(400, f"'input[{i}]' decodes to no text (only special tokens): send the ids of some text",
                           param="input", code="empty_input")
        texts.append(text)
    return texts


def refuse_long_token_ids(embedder: Any, items: list[str | list[int]]) -> None:
    """``truncate: false`` with more token ids than ``max_length``: a 413 naming the count."""
    limit = embedder.max_length
    for i, item in enumerate(items):
        if isinstance(item, list) and len(item) > limit:
            raise _too_long(i, f"{len(item)} token ids", limit)


def refuse_truncated(embedder: Any, template: PromptTemplate, texts: list[str], truncated: list[int]) -> None:
    """``truncate: false``: the first input that had to be cut gets a 413 naming its token count."""
    if not truncated:
        return
    i = truncated[0]
    limit = embedder.max_length
    text = texts[i]
    bound = limit * _COUNT_CHARS_PER_TOKEN
    count = len(embedder.tokenizer(template.wrap(template.clean(text[:bound])), add_special_tokens=True)["input_ids"])
    size = f"{count} tokens" if len(text) <= bound else f"at least {count} tokens"
    raise _too_long(i, f"{size} with the prompt", limit)


def _too_long(index: int, size: str, limit: int) -> ApiError:
    return ApiError(413, f"'input[{index}]' has {size}; this model takes at most {limit} (max_length): shorten it, "
                    "or send \"truncate\": true to have it cut to fit", param="input", code="input_too_long")
