"""``long_texts="chunk"``: a text longer than ``max_length`` becomes several token windows, each wrapped in the
prompt, and the windows' raw parts are pooled into the text's one row.

Why this pooling: every window is run exactly like a short text (same prompt, same forward pass, same pooling),
and the row is the mean of the windows' RAW hidden states and RAW router scores, weighted by the tokens each
window took in the model. Standardisation is affine per dimension, so standardising the mean equals the mean of
the standardised windows: every mode (hs, rw, concat, sum) sees one consistent row, normalised once at the end.
With ``pooling="mean"`` the weighted mean of window means is the mean over the document's tokens (the prompt's
and overlap's tokens aside); with ``"last"`` it averages the summaries PromptEOL makes each window write.

Bounded work: a long text is tokenised in character slices (a few times ``max_length`` tokens' worth each, never
the whole text in one call), and windows are encoded in groups of at most :data:`GROUP_WINDOWS`, each group
planned by the embedder's own token budget; a text of any length holds at most one group of windows in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .batching import _encode, tokenize
from .parts import MoEEParts
from .pipeline import chunk_spans
from .prompts import PromptTemplate

if TYPE_CHECKING:
    from .embedder import MoEEmbedder

logger = logging.getLogger("moee_plugins")

LONG_TEXTS = ("truncate", "chunk")
SLICE_CHARS_PER_TOKEN = 8
"""First guess of characters per token when slicing a long text for the tokenizer (doubled while too short)."""
SHORT_TEXT_CHARS_PER_TOKEN = 16
"""Texts of at most ``max_length`` x this many characters are tokenised whole, in the usual batched call."""
GROUP_WINDOWS = 1024
"""Windows encoded per call of the embedder (each call plans its own token-budget batches)."""


def window_room(tokenizer: Any, template: PromptTemplate, max_length: int, overlap: int) -> int:
    """Text tokens one window holds (``max_length`` less the prompt's tokens); refuses an overlap that leaves
    no progress."""
    overhead = len(_encode(tokenizer, template.wrap("")))
    room = max_length - overhead
    if room < 1:
        raise ValueError(f"max_length={max_length} leaves no room for text: the prompt template {template.name!r} "
                         f"alone takes {overhead} tokens")
    if overlap >= room:
        raise ValueError(f"chunk_overlap={overlap} must be smaller than the text tokens of one window ({room} = "
                         f"max_length {max_length} - {overhead} prompt tokens); lower chunk_overlap or raise max_length")
    return room


def split_text(tokenizer: Any, template: PromptTemplate, cleaned: str, max_length: int, overlap: int = 0
               ) -> list[tuple[str, list[int]]]:
    """``(window text, token ids)`` of every window of an already cleaned text, in order: each window is a
    character span of ``cleaned`` whose prompt-wrapped token ids fit in ``max_length``, the next one starting
    ``overlap`` tokens before the previous one's end. A text that fits gives one window: the whole text."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("long_texts='chunk' needs a fast (Rust) tokenizer, which reports character offsets; "
                         "load the model's fast tokenizer or use long_texts='truncate'")
    room = window_room(tokenizer, template, max_length, overlap)
    windows: list[tuple[str, list[int]]] = []
    start, n = 0, len(cleaned)
    while True:
        size = SLICE_CHARS_PER_TOKEN * room
        while True:  # a slice holding more than one window's tokens, or the rest of the text
            offsets = tokenizer(cleaned[start : start + size], add_special_tokens=False, return_offsets_mapping=True,
                                return_attention_mask=False)["offset_mapping"]
            at_end = start + size >= n
            if len(offsets) > room or at_end:
                break
            size *= 2
        if at_end and len(offsets) <= room:  # the rest fits in one window
            ids = _wrapped_ids(tokenizer, template, cleaned[start:])
            if len(ids) <= max_length:
                windows.append((cleaned[start:], ids))
                return windows
        keep = min(room, len(offsets))
        while True:  # merges across the prompt's edges can add a token or two: shave them
            end = start + offsets[keep - 1][1]
            ids = _wrapped_ids(tokenizer, template, cleaned[start:end])
            if len(ids) <= max_length or keep == 1:
                break
            keep = max(1, keep - (len(ids) - max_length))
        windows.append((cleaned[start:end], ids))
        step = max(keep - overlap, 1)  # the next window starts `overlap` tokens before this one's end
        following = start + offsets[step][0] if step < len(offsets) else end
        start = following if following > start else max(end, start + 1)


def _wrapped_ids(tokenizer: Any, template: PromptTemplate, text: str) -> list[int]:
    ids = _encode(tokenizer, template.wrap(text))
    return ids or tokenize(tokenizer, template, [""], 1 << 30)[0]


def text_windows(tokenizer: Any, template: PromptTemplate, texts: Sequence[str], max_length: int, overlap: int
                 ) -> Iterator[tuple[int, list[list[int]]]]:
    """``(index, token ids of each window)`` for every text, in order. Short texts are tokenised in one batched
    call as in truncate mode (same ids); a text longer than ``max_length`` tokens is split by :func:`split_text`."""
    short_chars = SHORT_TEXT_CHARS_PER_TOKEN * max_length
    cleaned = [template.clean(text) for text in texts]
    short = [i for i, text in enumerate(cleaned) if len(text) <= short_chars]
    whole = dict(zip(short, tokenize(tokenizer, template, [texts[i] for i in short], 1 << 30), strict=True))
    for i, text in enumerate(cleaned):
        ids = whole.pop(i, None)
        if ids is not None and len(ids) <= max_length:
            yield i, [ids]
        else:
            yield i, [window for _, window in split_text(tokenizer, template, text, max_length, overlap)]


class _Pooled:
    """Token-weighted sums of the windows of texts still in progress (float64, summed in window order, so a
    text's row never depends on how its windows were grouped)."""

    def __init__(self, hidden: np.ndarray, routing: np.ndarray, lengths: np.ndarray) -> None:
        self.hidden, self.routing, self.lengths = hidden, routing, lengths
        self.open: dict[int, list[Any]] = {}

    def add(self, owners: list[int], counts: dict[int, int], parts: MoEEParts) -> None:
        for k, row in enumerate(owners):
            weight = float(parts.num_tokens[k])
            if counts[row] == 1:  # one window: the row is exactly that window's (as in truncate mode)
                self.hidden[row], self.routing[row], self.lengths[row] = parts.hidden[k], parts.routing[k], weight
                continue
            sums = self.open.setdefault(row, [0.0, 0.0, 0.0, 0])
            sums[0] = sums[0] + weight * parts.hidden[k].astype(np.float64)
            sums[1] = sums[1] + weight * parts.routing[k].astype(np.float64)
            sums[2] += weight
            sums[3] += 1
            if sums[3] == counts[row]:
                self.hidden[row] = sums[0] / sums[2]
                self.routing[row] = sums[1] / sums[2]
                self.lengths[row] = int(sums[2])
                del self.open[row]


def encode_chunked(embedder: MoEEmbedder, items: list[str], template: PromptTemplate, batch_size: int,
                   show_progress_bar: bool | None, progress: Any = None) -> MoEEParts:
    """The raw parts of ``items`` under ``long_texts="chunk"``: row i pools the windows of text i."""
    window_room(embedder.tokenizer, template, embedder.max_length, embedder.chunk_overlap)  # a bad setting fails first
    n = len(items)
    hidden = np.empty((n, embedder.hidden_dim), dtype=np.float32)
    routing = np.empty((n, embedder.routing_dim), dtype=np.float32)
    lengths = np.zeros(n, dtype=np.int64)
    if n == 0:
        return MoEEParts(hidden, routing, lengths, list(embedder.layout))
    if show_progress_bar is None:
        show_progress_bar = logger.getEffectiveLevel() <= logging.INFO and n > 1
    from tqdm.auto import tqdm

    pooled = _Pooled(hidden, routing, lengths)
    own_bar = tqdm(total=n, desc="Encoding", unit="text", disable=progress is not None or not show_progress_bar)
    bar = own_bar if progress is None else progress
    rows: list[list[int]] = []
    owners: list[int] = []
    counts: dict[int, int] = {}

    def run() -> None:
        if rows:
            parts = embedder.encode_token_ids(rows, batch_size=batch_size, show_progress_bar=False)
            pooled.add(owners, counts, parts)
            done = sum(1 for row in set(owners) if row not in pooled.open)
            for row in [row for row in set(owners) if row not in pooled.open]:
                counts.pop(row, None)
            bar.update(done)
            rows.clear()
            owners.clear()

    with own_bar:
        for start, stop in chunk_spans(items):
            windows = text_windows(embedder.tokenizer, template, items[start:stop], embedder.max_length,
                                   embedder.chunk_overlap)
            for i, ids in windows:
                counts[start + i] = len(ids)
                for window in ids:
                    rows.append(window)
                    owners.append(start + i)
                    if len(rows) >= GROUP_WINDOWS:
                        run()
            run()
    return MoEEParts(hidden, routing, lengths, list(embedder.layout))


def chunked_features(embedder: MoEEmbedder, texts: list[str], prompt: Any = None) -> Any:
    """[HS | RW] raw and pooled per text under ``long_texts="chunk"``, as a float32 tensor on the model's input
    device: what :meth:`MoEEmbedder.encode_features` gives for padded rows, for a framework whose batch holds
    texts that may each need several windows (sentence-transformers)."""
    import torch

    parts = embedder.encode_parts(texts, prompt=prompt, show_progress_bar=False)
    both = np.concatenate([parts.hidden, parts.routing], axis=1)
    return torch.from_numpy(both).to(embedder.device)


def encode_request(embedder: MoEEmbedder, texts: list[str], dimensions: int | None) -> tuple[np.ndarray, int]:
    """(vectors, tokens used) of one server request under ``long_texts="chunk"``: its windows are planned and
    pooled by the core here, not merged with other requests' rows (a text's windows must meet again)."""
    parts = embedder.encode_parts(texts, show_progress_bar=False)
    return embedder.combine(parts, dimensions=dimensions), int(parts.num_tokens.sum())
