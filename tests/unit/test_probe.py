"""The probe file: which calibration inputs it keeps, and that its results survive JSON at float32 precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from berthing.packaging.probe import PROBE_INPUTS, Probe, pick, read_probe, write_probe


def test_pick_spreads_over_every_input_and_keeps_small_sets_whole() -> None:
    chosen = pick(209)
    assert len(chosen) == PROBE_INPUTS and chosen[0] == 0 and chosen[-1] == 208
    assert chosen == sorted(set(chosen))
    assert pick(24) == list(range(24))


def test_results_round_trip_through_probe_json(tmp_path: Path) -> None:
    vectors = [np.random.default_rng(1).standard_normal(384).astype(np.float32) for _ in range(3)]
    classified = [{"label": "pos", "scores": {"pos": np.float32(0.75), "neg": np.float64(0.25)}}]
    write_probe(tmp_path, Probe("embed", ["a", "b", "c"], {"normalize": True}, vectors))
    back = read_probe(tmp_path)
    assert back is not None and back.inputs == ["a", "b", "c"] and back.options == {"normalize": True}
    assert np.allclose(np.asarray(back.results), np.asarray(vectors), rtol=1e-6, atol=0)
    write_probe(tmp_path, Probe("classify", ["x"], {}, classified))
    assert read_probe(tmp_path).results == [{"label": "pos", "scores": {"pos": 0.75, "neg": 0.25}}]
    assert read_probe(tmp_path / "missing") is None
