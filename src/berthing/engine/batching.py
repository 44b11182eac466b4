"""Pure batch planning: which queued items go together, under a padded-token budget and a size cap."""

from __future__ import annotations


def select_batch(lengths: list[int], max_tokens: int, max_size: int) -> list[int]:
    """Indices of one batch from a queue in arrival order.

    The oldest item (index 0) always goes, so nothing starves; the rest are its nearest neighbours in
    length, so padding stays low. Cost = longest length x count, kept <= max_tokens (one item alone may
    exceed it).
    """
    n = len(lengths)
    if n == 0:
        return []
    longest = max(lengths)
    if n <= max_size and longest * n <= max_tokens:
        return list(range(n))
    order = sorted(range(n), key=lengths.__getitem__)
    pos = order.index(0)
    lo = hi = pos
    width = lengths[0]
    while hi - lo + 1 < max_size:
        left = order[lo - 1] if lo > 0 else None
        right = order[hi + 1] if hi + 1 < n else None
        if left is None and right is None:
            break
        # prefer the neighbour closer in length; sorted order means left <= width <= right
        if right is None or (left is not None and width - lengths[left] <= lengths[right] - width):
            if max(width, lengths[left]) * (hi - lo + 2) > max_tokens:
                break
            lo -= 1
        else:
            if lengths[right] * (hi - lo + 2) > max_tokens:
                break
            hi += 1
            width = lengths[right]
    return sorted(order[lo : hi + 1])


def plan_batches(lengths: list[int], max_tokens: int, max_size: int) -> list[list[int]]:
    """Split a whole list of items into batches of similar length (the in-process path)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    for idx in order:
        if current and (len(current) >= max_size or lengths[idx] * (len(current) + 1) > max_tokens):
            batches.append(current)
            current = []
        current.append(idx)
    if current:
        batches.append(current)
    return batches
