"""TorchServe handler for sentence embeddings, written the way TorchServe's BERT tutorials write one.

Why this shape: the benchmark compares berthing with what a TorchServe user would deploy, so the handler is the
tutorial's (HF AutoModel + AutoTokenizer, tokenize in `preprocess`, forward in `inference`), plus what it takes to
match sentence-transformers' vectors: mean pooling over the attention mask and L2 normalization.

Padding: each batch is padded to its longest text (`padding=True`), not to a fixed max_length as the tutorial's
`encode_plus(..., pad_to_max_length=True)` does; the fixed padding would make every short sentence cost 256 tokens,
which is slower and no real deployment should copy. Texts longer than 256 tokens are cut, as sentence-transformers does.

Input, per request: a JSON string, a JSON list of strings, `{"input": str | list}`, or a raw UTF-8 body. The answer
mirrors it: one vector for one text, a list of vectors for a list. With TorchServe batching on, one request is one
item of TorchServe's batch, whatever the number of texts it carries.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer
from ts.torch_handler.base_handler import BaseHandler

logger = logging.getLogger(__name__)

MAX_LENGTH = 256  # all-MiniLM-L6-v2's sentence_bert_config.json max_seq_length


def _texts(request: dict[str, Any]) -> tuple[list[str], bool]:
    """The texts of one request and whether it sent a list."""
    data = request.get("data") if request.get("data") is not None else request.get("body")
    if isinstance(data, (bytes, bytearray)):
        data = data.decode("utf-8")
    if isinstance(data, dict):
        data = data.get("input", data.get("inputs", data.get("text")))
    if isinstance(data, str):
        return [data], False
    if isinstance(data, list) and data and all(isinstance(t, str) for t in data):
        return data, True
    raise ValueError("expected a text, a list of texts, or {'input': ...}")


class SentenceEmbeddingHandler(BaseHandler):
    """AutoModel + mean pooling + L2 normalize: sentence-transformers' all-MiniLM-L6-v2 vectors from TorchServe."""

    def initialize(self, context: Any) -> None:
        model_dir = context.system_properties.get("model_dir")
        self.device = torch.device("cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).to(self.device).eval()
        self.initialized = True
        logger.info("loaded %s, torch threads=%d, torch %s", model_dir, torch.get_num_threads(), torch.__version__)

    def preprocess(self, requests: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], list[tuple[int, bool]]]:
        texts: list[str] = []
        spans: list[tuple[int, bool]] = []
        for request in requests:
            items, is_list = _texts(request)
            texts.extend(items)
            spans.append((len(items), is_list))
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        return dict(encoded), spans

    def inference(self, data: tuple[dict[str, torch.Tensor], list[tuple[int, bool]]], *args: Any, **kwargs: Any) -> Any:
        encoded, spans = data
        with torch.inference_mode():
            hidden = self.model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return vectors, spans

    def postprocess(self, data: Any) -> list[Any]:
        vectors, spans = data
        rows = vectors.tolist()
        out: list[Any] = []
        at = 0
        for count, is_list in spans:
            out.append(rows[at : at + count] if is_list else rows[at])
            at += count
        return out
