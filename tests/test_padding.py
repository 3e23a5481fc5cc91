"""Right padding and gathering the last real token by index."""

from __future__ import annotations

import torch

from moee_plugins.core.batching import left_pad, position_ids_from_mask, right_pad
from moee_plugins.core.pooling import last_token_index, last_token_pool, mean_pool


def test_right_pad_starts_every_text_at_position_zero():
    ids, mask = right_pad([[5, 6, 7], [9], [1, 2, 3, 4, 5]], pad_id=0)
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7, 0, 0], [9, 0, 0, 0, 0], [1, 2, 3, 4, 5]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert position_ids_from_mask(mask)[:, :3].tolist() == [[0, 1, 2], [0, 0, 0], [0, 1, 2]]


def test_last_real_token_is_gathered_by_index_whichever_side_is_padded():
    rows = [[5, 6, 7], [9], [1, 2, 3, 4, 5]]
    for pad in (right_pad, left_pad):
        ids, mask = pad(rows, pad_id=0)
        assert last_token_index(mask).tolist() == ([2, 0, 4] if pad is right_pad else [4, 4, 4])
        values = ids.unsqueeze(-1).float().expand(-1, -1, 2)
        assert last_token_pool(values, mask)[:, 0].tolist() == [7.0, 9.0, 5.0]
        assert mean_pool(values, mask)[:, 0].tolist() == [6.0, 9.0, 3.0]
