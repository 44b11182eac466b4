"""Comparing NER answers with transformers' token-classification pipeline, shared by the NER test files."""

from __future__ import annotations

TOLERANCE = 1e-4


def assert_same_entities(reference: list[list[dict]], got: list[list[dict]], texts: list[str], strategy: str) -> float:
    """Entity by entity: label, start and end exact, score within 1e-4; tokens (`none`) keep the pipeline's word
    and index, groups take their word from the text. Returns the largest score gap."""
    key = "entity" if strategy == "none" else "entity_group"
    worst = 0.0
    assert len(got) == len(reference) == len(texts)
    for text, ref, res in zip(texts, reference, got, strict=True):
        assert [(r[key], r["start"], r["end"]) for r in ref] == [(g[key], g["start"], g["end"]) for g in res], text
        for r, g in zip(ref, res, strict=True):
            worst = max(worst, abs(float(r["score"]) - g["score"]))
            if strategy == "none":  # raw tokens: the pipeline's word (the token) and index
                assert (g["word"], g["index"]) == (r["word"], r["index"]), text
                assert list(g) == ["entity", "score", "index", "word", "start", "end"]
            else:  # groups: the original text, not the decoded (lowercased) tokens
                assert g["word"] == text[g["start"] : g["end"]], text
                assert list(g) == ["entity_group", "score", "word", "start", "end"]
    assert worst < TOLERANCE, worst
    return worst
