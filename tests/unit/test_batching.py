"""Batch planning: token budget, size cap, fairness to the oldest item, similar lengths together."""

from __future__ import annotations

import random

from berthing.engine.batching import plan_batches, select_batch


def test_everything_fits_in_one_batch() -> None:
    assert select_batch([5, 9, 3], max_tokens=100, max_size=8) == [0, 1, 2]


def test_oldest_item_always_goes_and_neighbours_are_close_in_length() -> None:
    lengths = [50, 10, 11, 49, 12, 51, 48]
    chosen = select_batch(lengths, max_tokens=160, max_size=8)
    assert 0 in chosen
    assert sorted(lengths[i] for i in chosen) == [49, 50, 51]  # 3 x 51 = 153 <= 160


def test_size_cap_and_budget_hold_on_random_queues() -> None:
    rng = random.Random(3)
    for _ in range(200):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 100))]
        chosen = select_batch(lengths, max_tokens=2048, max_size=16)
        assert 0 in chosen and len(chosen) == len(set(chosen)) <= 16
        assert len(chosen) == 1 or max(lengths[i] for i in chosen) * len(chosen) <= 2048


def test_an_item_over_the_budget_goes_alone() -> None:
    assert select_batch([500, 3, 4], max_tokens=100, max_size=8) == [0]


def test_plan_covers_every_item_once_within_limits() -> None:
    rng = random.Random(5)
    lengths = [rng.randint(1, 256) for _ in range(1000)]
    batches = plan_batches(lengths, max_tokens=4096, max_size=32)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    for batch in batches:
        assert len(batch) <= 32
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 4096
