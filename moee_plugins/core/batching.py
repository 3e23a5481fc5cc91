"""Tokenisation under the truncation rule, and length-sorted batches under a row cap and a token budget."""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .prompts import PromptTemplate


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def _fallback_token(tokenizer) -> int:
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


# Cutting a text by characters before any tokenizer call, so work per text is bounded by max_length.
GUARD_TOKENS = 8  # longest-token widths kept between the last token that is read and the cut
_FIRST_CHARS_PER_TOKEN = 8  # the first cut's guess; a text that needs more characters per token gets a longer cut
_longest_token: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _guard_chars(tokenizer, longest: int) -> int:
    """Characters kept after the last token that is read: text after the cut can only change tokens this close
    to it. Eight longest tokens, and twice the longest word WordPiece still splits (a longer one becomes one
    unknown token whole, so a word cut short would be split where the whole word is not)."""
    word = getattr(getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None), "max_input_chars_per_word",
                   None)
    return max(GUARD_TOKENS * longest, 2 * word if isinstance(word, int) else 0)


def longest_token_chars(tokenizer) -> int | None:
    """Characters in the vocabulary's longest token string (a byte-level or SentencePiece token never covers
    more characters than its string has); ``None`` for a tokenizer without a vocabulary to read."""
    try:
        return _longest_token[tokenizer]
    except (KeyError, TypeError):
        pass
    try:
        longest = max((len(token) for token in tokenizer.get_vocab()), default=0)
    except Exception:  # a custom callable tokenizer: no bound is known, nothing is cut
        return None
    longest = max(int(longest), 1)
    with contextlib.suppress(TypeError):
        _longest_token[tokenizer] = longest
    return longest


def cut_text(tokenizer, text: str, max_length: int, clean: Callable[[str], str] = str) -> str:
    """``clean(text)``, or ``clean`` of a prefix of ``text`` whose first tokens are those of the whole text.

    Tokenising costs time and memory in proportion to the characters handed over; only the first
    ``max_length`` tokens of a text are ever read. The prefix is accepted only when its tokenisation (with
    offsets) holds more than ``max_length + GUARD_TOKENS`` tokens that end at least ``GUARD_TOKENS`` longest
    tokens before the cut (:func:`_guard_chars`): text after the cut can only change tokens overlapping that
    guard, so every token
    that is read, the offsets the truncation cuts at and the "longer than max_length" decision are exactly
    those of the whole text. A prefix that falls short (long tokens, characters a normaliser drops) is
    doubled until it holds enough or is the whole text. When each token covers at most the longest token's
    characters (byte-level BPE, SentencePiece with byte fallback), the characters tokenised for one text stay
    under ``~4 x (max_length + 2 x GUARD_TOKENS) x longest``, whatever its length. Slow (Python) tokenizers
    give no offsets: their texts are not cut.
    """
    return _cut(tokenizer, text, max_length, clean)[0]


def _cut(tokenizer, text: str, max_length: int, clean: Callable[[str], str]) -> tuple[str, bool]:
    """(:func:`cut_text`, whether it cut)."""
    longest = longest_token_chars(tokenizer)
    if longest is None or not getattr(tokenizer, "is_fast", False):
        return clean(text), False
    guard = _guard_chars(tokenizer, longest)
    needed = max_length + GUARD_TOKENS
    cut = needed * _FIRST_CHARS_PER_TOKEN + guard
    while cut < len(text):
        piece = clean(text[:cut])
        offsets = tokenizer(piece, add_special_tokens=False, return_attention_mask=False,
                            return_offsets_mapping=True)["offset_mapping"]
        # tokens, from the first, that end before the guard: text after the cut cannot reach them
        stable = next((i for i, (_, end) in enumerate(offsets) if end > cut - guard), len(offsets))
        if stable > needed:
            return piece, True
        cut *= 2
    return clean(text), False


def truncate_inside(tokenizer, template: PromptTemplate, cleaned: str, max_length: int) -> list[int]:
    """Token ids of ``template.wrap(text)`` cut to ``max_length`` by shortening the text, never the template.

    With last-token pooling the template's end (``means in one word:"``) is what is read: cutting it
    off a long document would silently destroy the embedding. Only a bounded prefix of ``cleaned`` is
    tokenised (:func:`cut_text`); the ids are those the whole text gives.
    """
    return _truncate_inside(tokenizer, template, cut_text(tokenizer, cleaned, max_length), max_length)


def _truncate_inside(tokenizer, template: PromptTemplate, cleaned: str, max_length: int) -> list[int]:
    overhead = len(_encode(tokenizer, template.wrap("")))
    if overhead >= max_length:
        raise ValueError(
            f"max_length={max_length} leaves no room for text: the prompt template {template.name!r} alone takes "
            f"{overhead} tokens"
        )
    fast = getattr(tokenizer, "is_fast", False)
    encoded = tokenizer(cleaned, add_special_tokens=False, return_offsets_mapping=fast)
    text_ids = list(encoded["input_ids"])
    offsets = encoded.get("offset_mapping") if fast else None
    keep = min(len(text_ids), max_length - overhead)
    while keep > 0:
        if offsets is not None:
            prefix = cleaned[: offsets[keep - 1][1]]
        else:
            prefix = tokenizer.decode(text_ids[:keep], skip_special_tokens=True)
        ids = _encode(tokenizer, template.wrap(prefix))
        if len(ids) <= max_length:
            return ids
        keep -= len(ids) - max_length  # token merges across the cut can add a few tokens; shave them
    return _encode(tokenizer, template.wrap(""))


TOKENIZER_BATCH = 512  # texts handed to the tokenizer at once (bounds its per-call encodings, see tokenize)


def tokenize(tokenizer, template: PromptTemplate, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of every prompt; long texts are truncated inside the template, empty ones get one token."""
    return tokenize_marking_truncated(tokenizer, template, texts, max_length)[0]


def tokenize_marking_truncated(tokenizer, template: PromptTemplate, texts: Sequence[str],
                               max_length: int) -> tuple[list[list[int]], list[int]]:
    """:func:`tokenize`, and the indices of the texts whose prompt was longer than ``max_length`` (cut)."""
    if not texts:
        return [], []
    # each text cut by characters first (cut_text): time and memory per text are flat in its length
    pieces = [_cut(tokenizer, text, max_length, template.clean) for text in texts]
    cleaned = [piece for piece, _ in pieces]
    ids: list[list[int]] = []
    for start in range(0, len(cleaned), TOKENIZER_BATCH):
        # token ids only (no attention masks or type ids to build and drop), a sub-batch at a time: a fast
        # tokenizer's encodings (tokens, offsets, masks) take a few KB per text until converted
        encoded = tokenizer([template.wrap(c) for c in cleaned[start : start + TOKENIZER_BATCH]],
                            add_special_tokens=True, return_attention_mask=False,
                            return_token_type_ids=False)["input_ids"]
        ids.extend(row if isinstance(row, list) else list(row) for row in encoded)
        del encoded
    truncated: list[int] = []
    for i, row in enumerate(ids):
        if pieces[i][1] and len(row) <= max_length:  # not expected (a cut text has > max_length tokens): if so,
            cleaned[i] = template.clean(texts[i])           # the whole text decides, as it always did
            row = ids[i] = _encode(tokenizer, template.wrap(cleaned[i]))
        if len(row) > max_length:
            ids[i] = _truncate_inside(tokenizer, template, cleaned[i], max_length)
            truncated.append(i)
        elif not row:  # e.g. raw prompt on "": the model needs at least one position to read
            ids[i] = [_fallback_token(tokenizer)]
    return ids, truncated


def plan_batches(lengths: Sequence[int], batch_size: int, max_tokens_per_batch: int | None = None, *,
                 batch_cost: int | None = None) -> list[list[int]]:
    """Group indices longest first, so padding is minimal and out-of-memory shows up on the first batch.

    A batch holds at most ``batch_size`` rows and, when set, at most ``max_tokens_per_batch`` padded
    tokens (rows x longest row); a single row longer than the budget forms a batch of its own.

    ``batch_cost=None`` fills each batch in turn as far as the limits allow (the fewest batches). With a
    ``batch_cost`` (the fixed cost of one forward pass, in padded tokens), the cut points of the same
    length-sorted order are chosen to minimise ``processed tokens + batch_cost x batches`` under the same
    limits: batches end where the lengths drop, not where the budget happens to run out.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens_per_batch is not None and max_tokens_per_batch < 1:
        raise ValueError(f"max_tokens_per_batch must be >= 1, got {max_tokens_per_batch}")
    if batch_cost is not None and batch_cost < 0:
        raise ValueError(f"batch_cost must be >= 0, got {batch_cost}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if batch_cost is not None:
        ends = _cheapest_cuts([lengths[i] for i in order], batch_size, max_tokens_per_batch, batch_cost)
        return [order[start:stop] for start, stop in itertools.pairwise([0, *ends])]
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        if current:
            longest = lengths[current[0]]
            too_many_rows = len(current) >= batch_size
            too_many_tokens = max_tokens_per_batch is not None and (len(current) + 1) * longest > max_tokens_per_batch
            if too_many_rows or too_many_tokens:
                batches.append(current)
                current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def _cheapest_cuts(sorted_lengths: Sequence[int], batch_size: int, max_tokens_per_batch: int | None,
                   batch_cost: int) -> list[int]:
    """End positions of the batches of the cheapest plan over lengths sorted longest first (exact dynamic
    programme: ``cost[i]`` is the cheapest way to run rows ``i..n-1``, a batch from ``i`` being padded to
    ``sorted_lengths[i]``). On ties the larger batch wins. O(n x rows per batch), vectorised per row."""
    lengths = np.asarray(sorted_lengths, dtype=np.int64)
    n = len(lengths)
    cost = np.zeros(n + 1, dtype=np.int64)
    end = np.zeros(n, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        rows = min(batch_size, n - i)
        if max_tokens_per_batch is not None:
            rows = min(rows, max(1, max_tokens_per_batch // int(lengths[i])))
        options = np.arange(1, rows + 1, dtype=np.int64) * lengths[i] + cost[i + 1 : i + rows + 1]
        k = rows - 1 - int(np.argmin(options[::-1]))
        cost[i] = options[k] + batch_cost
        end[i] = i + k + 1
    ends, at = [], 0
    while at < n:
        at = int(end[at])
        ends.append(at)
    return ends


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), left-padded: the paper code's layout. Never fed to the model here (every
    forward pass, the sentence-transformers features included, uses :func:`right_pad`); kept for the benchmarks
    that replay the reference."""
    width = max(len(row) for row in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        if len(row):
            input_ids[i, width - len(row) :] = row
            attention_mask[i, width - len(row) :] = 1
    return torch.from_numpy(input_ids), torch.from_numpy(attention_mask)


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), padded on the right: every text starts at position 0.

    Right padding, not left: in a causal decoder a real token never attends to a later position, so pads
    after the text cannot reach it whatever an attention kernel, a recurrence (Mamba, gated delta net,
    linear attention), a sliding window or chunked attention does with the mask. Left padding relies on
    every such path honouring the mask for pads *before* the text, and some do not (deepseek_v4's hidden
    state moved by 0.69 with left padding). The last real token is then gathered by index
    (:func:`moee_plugins.core.pooling.last_token_pool`).

    Filled in numpy: converting Python lists is ~10x faster there than with ``torch.as_tensor``, and
    this runs once per batch on the critical path (a GPU waits for it).
    """
    width = max(len(row) for row in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        if len(row):
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
    return torch.from_numpy(input_ids), torch.from_numpy(attention_mask)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (0, 1, ...), whichever side the padding is on."""
    return (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
