"""Tokenizers for the tiny models of other architectures, built offline and deterministically.

RoBERTa needs a byte-level BPE and XLM-R a SentencePiece-style Unigram: both are trained here on a small
built-in English + Chinese corpus. The WordPiece ones (DistilBERT, ELECTRA, MPNet) reuse all-MiniLM-L6-v2's
vocabulary. Each is saved with save_pretrained, so `AutoTokenizer.from_pretrained(folder)` works and the
folder holds a tokenizer.json for berthing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from berthing.packaging.sources import default_model_path

# <s> <pad> </s> <unk> first, as in RoBERTa and XLM-R checkpoints: pad id 1, unk id 3.
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]

_EN = """\
the model server answers requests quickly while batching them on two cpu cores .
deploying bert to production used to mean writing a custom handler for torchserve .
a quick brown fox jumps over the lazy dog near the river bank in the early morning .
embeddings turn sentences into vectors so that similar meanings end up close together .
this movie was wonderful and the actors were great , i would watch it again .
the service was terrible , the food arrived cold and nobody answered the phone .
john smith works for the united nations in new york and lives in paris .
what is the capital of france ? the capital of france is paris .
long documents are split into windows that overlap by a few tokens .
tokenizers split words into pieces : byte level bpe , wordpiece and unigram models .
"""
_ZH = (
    "教练我想打篮球如何使用部署模型今天天气很好我们去公园散步这本书的内容非常精彩值得推荐给朋友们物流很快包装完好"
    "北京是中国的首都上海是一个大城市服务器在两个核心上回答请求张三在联合国工作住在纽约"
)


def corpus() -> list[str]:
    """The training lines: English sentences, Chinese phrases and every Chinese character on its own."""
    lines = [line for line in _EN.splitlines() if line]
    lines += [_ZH[i : i + 12] for i in range(0, len(_ZH), 6)]
    lines += sorted(set(_ZH))
    return lines * 3


def _save(tok: Any, target: Path, max_length: int) -> Path:
    tok.model_max_length = max_length
    tok.save_pretrained(str(target))
    return target


def roberta_tokenizer(target: Path, max_length: int = 128, vocab_size: int = 600) -> Path:
    """A byte-level BPE tokenizer saved as RoBERTa's (vocab.json, merges.txt, tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import RobertaTokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus(), trainer)
    model = _model_json(bpe)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = RobertaTokenizer(vocab=model["vocab"], merges=merges)
    return _save(tok, target, max_length)


def xlm_roberta_tokenizer(target: Path, max_length: int = 128, vocab_size: int = 400) -> Path:
    """A SentencePiece-style Unigram tokenizer (Metaspace '▁') saved as XLM-RoBERTa's tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizer

    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>", show_progress=False
    )
    unigram.train_from_iterator(corpus(), trainer)
    vocab = [(str(piece), float(score)) for piece, score in _model_json(unigram)["vocab"]]
    assert [p for p, _ in vocab[: len(SPECIALS)]] == SPECIALS, vocab[:6]
    tok = XLMRobertaTokenizer(vocab=vocab)
    return _save(tok, target, max_length)


def wordpiece_tokenizer(target: Path, arch: str, max_length: int = 128) -> Path:
    """MiniLM's uncased WordPiece vocabulary as DistilBERT's, ELECTRA's or MPNet's tokenizer.

    MPNet's real vocabulary is BERT's shifted by four (<s> <pad> </s> <unk> in front) plus <mask> at the end,
    with <s>/</s> as CLS/SEP; the same shift is applied here, so its vocab has 30527 entries.
    """
    from transformers import BertTokenizer, DistilBertTokenizer, MPNetTokenizer

    words = (default_model_path() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if arch == "mpnet":
        vocab = {t: i for i, t in enumerate(SPECIALS[:4] + words + ["<mask>"])}
        tok: Any = MPNetTokenizer(vocab=vocab, do_lower_case=True)
    else:
        cls = DistilBertTokenizer if arch == "distilbert" else BertTokenizer
        tok = cls(vocab={t: i for i, t in enumerate(words)}, do_lower_case=True)
    return _save(tok, target, max_length)


def _model_json(tok: Any) -> dict[str, Any]:
    import json

    return json.loads(tok.to_str())["model"]
