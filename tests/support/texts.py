"""Mixed-length English and Chinese sentences for parity checks (generated deterministically)."""

from __future__ import annotations

import random

_EN = (
    "the model server answers requests quickly while batching them on two cpu cores . "
    "deploying bert to production used to mean writing a custom handler for torchserve . "
    "a quick brown fox jumps over the lazy dog near the river bank in the early morning . "
    "embeddings turn sentences into vectors so that similar meanings end up close together ."
).split()
_ZH = "教练我想打篮球如何使用部署模型今天天气很好我们去公园散步这本书的内容非常精彩值得推荐给朋友们物流很快包装完好"


def mixed_sentences(n: int = 200, seed: int = 7) -> list[str]:
    """n sentences from 1 to ~300 tokens, alternating English and Chinese, some mixed."""
    rng = random.Random(seed)
    out: list[str] = []
    for i in range(n):
        size = rng.choice([1, 2, 3, 5, 8, 12, 20, 35, 60, 120, 300])
        if i % 3 == 0:
            out.append("".join(rng.choice(_ZH) for _ in range(size)))
        elif i % 3 == 1:
            out.append(" ".join(rng.choice(_EN) for _ in range(size)))
        else:
            out.append(" ".join(rng.choice(_EN) for _ in range(size // 2 + 1)) + rng.choice(_ZH) * (size // 2 + 1))
    return out


# One query and its candidates, for every rerank protocol's parity tests (a Chinese text among them).
RERANK_QUERY = "how does the model server batch requests"
RERANK_DOCS = [
    "The batcher groups requests by token count before running the model.",
    "Cats sleep for most of the day.",
    "A dynamic batcher waits a few milliseconds to fill a batch.",
    "教练, 我想打篮球.",
    "Requests are queued and shed when the queue is full.",
]
