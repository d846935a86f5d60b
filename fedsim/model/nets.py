"""The classifiers, all called as `model(**inputs) -> logits`."""

from __future__ import annotations

import torch
from torch import nn


class BagOfNgrams(nn.Module):
    """fastText-style classifier: the mean of hashed uni+bigram embeddings, then a linear layer."""

    def __init__(self, num_buckets: int = 2**18, dim: int = 16, num_classes: int = 2) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(num_buckets, dim, mode="mean")
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, input: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embedding(input, offsets))


class HFClassifier(nn.Module):
    """A Hugging Face sequence classifier (Hub id or local directory) returning plain logits."""

    def __init__(self, name: str, num_classes: int = 2) -> None:
        super().__init__()
        from transformers import AutoModelForSequenceClassification  # not in a bow run: Hugging Face models only
        from transformers.utils import logging as hf_logging  # not in a bow run: Hugging Face models only

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.net = AutoModelForSequenceClassification.from_pretrained(name, num_labels=num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=input_ids, attention_mask=attention_mask).logits
