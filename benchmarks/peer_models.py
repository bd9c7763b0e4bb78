"""The models tvmopt is measured on against its peers, with random weights and realistic inputs:
`python benchmarks/compare.py --torch benchmarks/peer_models.py:NAME --device cuda --precision fp16`.

Each factory returns (module, {input name: example tensor}); the module returns one tensor.
ResNet-50 needs torchvision and BERT-base transformers (both on the GPU host).
"""

import torch
from torch import nn


def resnet50(batch: int = 1):
    """torchvision's ResNet-50, 224x224."""
    import torchvision

    return torchvision.models.resnet50(), {"input": torch.randn(batch, 3, 224, 224)}


class _LastHiddenState(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def bert_base(seq: int = 128, batch: int = 1):
    """transformers' BertModel with `BertConfig()` (BERT-base: 12 layers, hidden 768), sequence
    128 with the last quarter padded, so the attention mask matters."""
    from transformers import BertConfig, BertModel

    config = BertConfig()
    config._attn_implementation = "eager"  # the attention the ONNX exporters trace faithfully
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[:, seq * 3 // 4:] = 0
    return _LastHiddenState(BertModel(config)), {"input_ids": ids, "attention_mask": mask}
