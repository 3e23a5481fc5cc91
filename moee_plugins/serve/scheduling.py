"""Which rows the next forward pass runs: shortest first over a fair look-ahead, with ageing so nobody starves.

The look-ahead takes rows round-robin across the waiting requests (one row of each in arrival order, then a
second of each, ...) up to a few batches' worth of rows and tokens, so a new one-text request is seen at once
however much a large request has queued. The next batch is then the shortest rows of the look-ahead, filled
up to the row cap and the padded-token budget: a short request never waits behind a window of long batches.
A request that has been passed over ``max_skips`` times goes next (its first waiting row, with the rows closest
to it in length, so padding stays low), so long ones still finish.
Pure functions of the waiting jobs: no threads, no clocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Waiting(Protocol):
    """What the scheduler reads of a queued request."""

    token_ids: list[list[int]]
    todo: list[int]  # rows not run yet, in order
    skipped: int  # forward passes run since this request last had a row in one


def look_ahead(jobs: Sequence[Any], max_rows: int, max_tokens: int) -> list[tuple[Any, int]]:
    """Up to ``max_rows`` rows / about ``max_tokens`` tokens of ``jobs``' unrun rows, round-robin by request."""
    taken: list[tuple[Any, int]] = []
    tokens = 0
    depth = 0
    while len(taken) < max_rows and tokens < max_tokens:
        added = False
        for job in jobs:
            if depth < len(job.todo):
                row = job.todo[depth]
                taken.append((job, row))
                tokens += len(job.token_ids[row])
                added = True
                if len(taken) >= max_rows or tokens >= max_tokens:
                    break
        if not added:
            break
        depth += 1
    return taken


def fill(candidates: Sequence[tuple[Any, int]], max_rows: int, max_tokens: int,
         batch_cost: int | None = None) -> list[tuple[Any, int]]:
    """The longest prefix of ``candidates`` within the row cap and padded-token budget (rows x longest row);
    the first candidate always goes, even alone over the budget. A row whose padding would cost more than
    ``batch_cost`` padded tokens (default: 1/16 of the budget, the core's estimate of a pass's fixed cost)
    ends the batch too: a short query then runs in a short pass instead of being padded to long texts."""
    cost = max_tokens // 16 if batch_cost is None else batch_cost
    batch: list[tuple[Any, int]] = []
    longest = 0
    for job, row in candidates:
        length = len(job.token_ids[row])
        padded = (len(batch) + 1) * max(longest, length)
        if batch and (len(batch) >= max_rows or padded > max_tokens
                      or padded - (len(batch) * longest) - length > cost):
            break
        batch.append((job, row))
        longest = max(longest, length)
    return batch


def next_batch(jobs: Sequence[Any], max_rows: int, max_tokens: int, window_batches: int,
               max_skips: int) -> list[tuple[Any, int]]:
    """The ``(job, row)`` pairs of the next forward pass (empty when nothing waits); ``jobs`` in arrival order.

    Updates each looked-at job's ``skipped`` count: reset when it gets a row in, else one more.
    """
    window = look_ahead(jobs, max_rows * window_batches, max_tokens * window_batches)
    if not window:
        return []
    by_length = sorted(window, key=lambda entry: len(entry[0].token_ids[entry[1]]))
    oldest = window[0][0]
    if oldest.skipped >= max_skips:  # it has waited long enough: its first row goes, with rows of similar length
        anchor = window[0]
        size = len(anchor[0].token_ids[anchor[1]])
        rest = sorted(window[1:], key=lambda e: (abs(len(e[0].token_ids[e[1]]) - size), len(e[0].token_ids[e[1]])))
        batch = fill([anchor, *rest], max_rows, max_tokens)
    else:
        batch = fill(by_length, max_rows, max_tokens)
    chosen = {id(job) for job, _ in batch}
    for job in {id(job): job for job, _ in window}.values():
        job.skipped = 0 if id(job) in chosen else job.skipped + 1
    return batch
