"""The one input rule of every adapter and reader: what counts as a batch of texts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def check_texts(texts: Any, *, item: str = "texts[{i}]") -> tuple[list[str], bool]:
    """A list of strings and whether the input was a single string. Names the first bad item (``item``: how,
    e.g. ``"row {i} of column 'text'"``).

    The one input rule of every adapter and reader: a mapping (its keys) or a set (no order) is refused, since
    output row i must belong to input i; so is a null (never silently an empty text) and text that is not valid
    Unicode (a lone surrogate).
    """
    if isinstance(texts, str):
        items, single = [texts], True
    else:
        if texts is None:
            raise TypeError("texts must be a string or a sequence of strings, got None")
        if isinstance(texts, (bytes, bytearray, Mapping)) or not isinstance(texts, Iterable):
            raise TypeError(f"texts must be a string or a sequence of strings, got {type(texts).__name__}")
        if isinstance(texts, (set, frozenset)):
            raise TypeError(f"texts must be an ordered sequence of strings, got a {type(texts).__name__} (no order: "
                            "row i could not match text i); pass a list, e.g. sorted(texts)")
        items, single = list(texts), False
        for i, value in enumerate(items):
            if value is None:
                raise TypeError(f"{item.format(i=i)} must be a string, got None (a null): fill or drop it first "
                                "(an empty text is the string \"\")")
            if not isinstance(value, str):
                raise TypeError(f"{item.format(i=i)} must be a string, got {type(value).__name__}: {value!r:.80}")
    for i, value in enumerate(items):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            where = "the text" if single else item.format(i=i)
            raise ValueError(f"{where} is not valid Unicode: a lone surrogate {value[exc.start]!r} at character "
                             f"{exc.start}; fix its decoding (e.g. errors='replace')") from None
    return items, single


def check_text_list(texts: Any, verb: str) -> list[str]:
    """:func:`check_texts` for a call that needs several texts (``verb``: the call, named in the error)."""
    items, single = check_texts(texts)
    if single:
        raise TypeError(f"{verb}() needs a sequence of texts, not a single string")
    return items
