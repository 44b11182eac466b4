"""The workload: a fixed pool of short mixed-length sentences, English and some Chinese, fully determined by the seed.

Why generated rather than a data file: every run sends the same text, so figures are comparable across runs,
and the length mix (8-60 tokens, mean ~31) resembles short user texts. Most Chinese characters are [UNK] in an
uncased English vocabulary; they are there for their length (one token per character), not their meaning.
"""

from __future__ import annotations

import random

POOL_SIZE = 4096
SEED = 20240611

_SUBJECTS = (
    "the customer", "our team", "the new model", "a small startup", "the support agent", "my neighbour",
    "the city council", "this library", "the delivery driver", "the research group", "a junior engineer",
    "the hotel staff", "the mobile app", "the search engine", "the weather service", "a local bakery",
)
_VERBS = (
    "reported", "fixed", "shipped", "reviewed", "cancelled", "explained", "improved", "ignored", "measured",
    "announced", "refunded", "scheduled", "translated", "summarized", "rejected", "approved", "deployed",
)
_OBJECTS = (
    "the order", "a billing problem", "the login page", "the quarterly report", "an urgent request",
    "the database migration", "a broken link", "the train schedule", "the product roadmap", "a late payment",
    "the onboarding guide", "the latency regression", "a duplicate invoice", "the privacy policy",
)
_TAILS = (
    "before the deadline", "after a long meeting", "without telling anyone", "on Monday morning",
    "during the holiday sale", "for the third time this week", "with surprisingly good results",
    "because the old version kept crashing", "although nobody asked for it", "in less than an hour",
    "while the servers were under heavy load", "so that customers in Europe could sign up again",
)
_EXTRA = (
    "honestly", "however", "as expected", "unfortunately", "in the end", "to be fair", "for example",
    "according to the logs", "once again", "by the way",
)
_QUESTIONS = (
    "how do I reset my password", "where is my package", "can I change the delivery address",
    "why was my card declined", "what time does the store open", "is this jacket available in blue",
    "does the plan include international calls", "how long does a refund take",
)
# Common simplified Chinese characters; the BERT uncased vocabulary maps each to one token.
_HANZI = (
    "我们的产品今天发布了新版本用户可以在手机上查看订单状态这个问题已经解决请稍后再试客服人员会尽快联系您"
    "天气很好适合出去散步公司明年计划扩大市场研究人员发现模型在长文本上表现更好服务器响应时间明显下降"
    "请问这家餐厅几点开门退款需要多长时间会议改到下周三上午十点系统升级期间部分功能暂时无法使用"
)


def _english(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:
        text = rng.choice(_QUESTIONS) + "? " + _english_clause(rng)
    else:
        parts = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)]
        if rng.random() < 0.8:
            parts.append(rng.choice(_TAILS))
        if rng.random() < 0.35:
            parts.insert(0, rng.choice(_EXTRA) + ",")
        text = " ".join(parts) + rng.choice((".", ".", ".", "!"))
    for _ in range(rng.choice((0, 1, 1, 1, 2, 2, 2))):  # a second/third clause makes the long tail
        text += " " + _english_clause(rng)
    return text[0].upper() + text[1:]


def _english_clause(rng: random.Random) -> str:
    clause = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
    if rng.random() < 0.5:
        clause += " " + rng.choice(_TAILS)
    return clause[0].upper() + clause[1:] + "."


def _chinese(rng: random.Random) -> str:
    n = rng.randint(12, 56)
    start = rng.randrange(len(_HANZI) - n)
    text = _HANZI[start : start + n]
    cut = rng.randint(4, n - 3)
    return text[:cut] + "，" + text[cut:] + "。"


def make_sentences(n: int = POOL_SIZE, seed: int = SEED) -> list[str]:
    """A fixed pool of `n` sentences: ~80% English, ~20% Chinese, 8-60 tokens, mean ~31 with [CLS]/[SEP]."""
    rng = random.Random(seed)
    return [_chinese(rng) if rng.random() < 0.2 else _english(rng) for _ in range(n)]


def batches_of(sentences: list[str], size: int) -> list[list[str]]:
    """Consecutive, wrapping slices of the pool so every request of a case gets different text."""
    return [[sentences[(i * size + j) % len(sentences)] for j in range(size)] for i in range(len(sentences))]
