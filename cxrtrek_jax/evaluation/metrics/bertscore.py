"""BERTScore (Zhang et al., ICLR 2020) with an encoder the user has on disk; nothing is downloaded.

    with BertScorer("/models/roberta-large", layer=17) as scorer:
        p, r, f = scorer.score(hypotheses, references).T

Each text is encoded by a Hugging Face encoder loaded from a local directory (`local_files_only`),
and the hidden states of `layer` (0 = the embeddings; default the last layer) are taken for its
tokens, the tokenizer's special tokens left out, each vector L2-normalised. With the cosine
similarities s_ij between hypothesis token i and reference token j:

    P = mean_i max_j s_ij      R = mean_j max_i s_ij      F = 2 P R / (P + R)

without idf weighting and without baseline rescaling (`bert_score`'s defaults `idf=False`,
`rescale_with_baseline=False`); a pair with an empty side scores 0. Published BERTScores use a
given model and layer (`bert_score`'s table: roberta-large layer 17 for English, ...): give the
same to compare.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = ["BertScorer"]


class BertScorer:
    """An encoder from `model_dir` (a Hugging Face model directory with its tokenizer), on CPU."""

    def __init__(self, model_dir: str | os.PathLike, layer: int | None = None, batch_size: int = 16,
                 max_length: int = 510):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if not os.path.isdir(model_dir):
            raise FileNotFoundError(f"BERTScore model {model_dir}: no such directory")
        self._torch = torch
        self.model_dir = os.fspath(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.model_dir, local_files_only=True).eval()
        layers = int(self.model.config.num_hidden_layers)
        self.layer = layers if layer is None else int(layer)
        if not 0 <= self.layer <= layers:
            raise ValueError(f"BERTScore layer {self.layer} outside 0..{layers} (the model's layers)")
        self.batch_size, self.max_length = batch_size, max_length

    def describe(self) -> str:
        return f"BERTScore F1, {self.model_dir} layer {self.layer}, no idf, no rescaling"

    def _embeddings(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per text float64[T, H]: the layer's normalised vectors of its non-special tokens."""
        out: list[np.ndarray] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt", return_special_tokens_mask=True)
            special = batch.pop("special_tokens_mask").numpy().astype(bool)
            with self._torch.no_grad():
                hidden = self.model(**batch, output_hidden_states=True).hidden_states[self.layer]
            hidden = hidden.double().numpy()
            keep = batch["attention_mask"].numpy().astype(bool) & ~special
            for row in range(len(chunk)):
                vectors = hidden[row][keep[row]]
                norms = np.linalg.norm(vectors, axis=1, keepdims=True)
                out.append(vectors / np.where(norms > 0, norms, 1.0))
        return out

    def score(self, hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
        """float64[N, 3]: precision, recall and F1 of each (hypothesis, reference) pair."""
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
        scores = np.zeros((len(hypotheses), 3))
        for index, (h, r) in enumerate(zip(self._embeddings(hypotheses), self._embeddings(references))):
            if len(h) == 0 or len(r) == 0:
                continue
            similarity = h @ r.T
            precision, recall = similarity.max(axis=1).mean(), similarity.max(axis=0).mean()
            f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
            scores[index] = precision, recall, f1
        return scores

    def close(self) -> None:
        self.model = None

    def __enter__(self) -> "BertScorer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
