"""Attention as each exporter writes it: one block per form (projections, attention, output
projection), exported by PyTorch's two exporters, so that a test per form and exporter can check
that the kernel library takes the whole attention as one layer.

The forms follow the code they copy (Hugging Face transformers, torch.nn), not tvmopt's patterns:
- `bert_eager`: HF BERT/RoBERTa eager: Q K^T / sqrt(d) + (1 - mask) * finfo.min, softmax.
- `gpt2_eager`: HF GPT-2 eager: packed c_attn split in three, scores / full([], sqrt(d)), the
  causal mask as where(tril[:, :, :s, :s], scores, finfo.min), plus the padding mask.
- `t5_bias`: HF T5: unscaled scores + relative-position bias + padding mask, softmax in fp32.
- `sdpa_padding`: HF SDPA path of BERT: scaled_dot_product_attention with an additive mask.
- `sdpa_causal`: scaled_dot_product_attention(is_causal=True) (GPT-2/Llama under SDPA).
- `multihead`: torch.nn.MultiheadAttention, batch_first, packed in-projection, need_weights=False
  (torchvision ViT, CLIP, Whisper).
- `llama`: Llama: bias-free projections, rotary embeddings (rotate_half), grouped-query heads
  (repeat_kv: expand + reshape), causal, SDPA or eager with an additive causal mask;
  `llama_masked` as transformers 5.x builds its eager mask: where(causal & padding, 0, min), one
  tensor from the positions and the attention_mask input.
"""

from __future__ import annotations

from pathlib import Path

import zoo

FORMS = ("bert_eager", "gpt2_eager", "t5_bias", "sdpa_padding", "sdpa_causal", "multihead",
         "llama_sdpa", "llama_eager", "llama_masked")
CAUSAL = {"gpt2_eager", "sdpa_causal", "llama_sdpa", "llama_eager", "llama_masked"}
# take an attention_mask input
PADDED = {"bert_eager", "gpt2_eager", "t5_bias", "sdpa_padding", "llama_masked"}


def block(form: str, *, hidden: int = 128, heads: int = 2, kv_heads: int | None = None):
    """A torch module for `form` taking (x[, attention_mask]) and returning [batch, seq, hidden]."""
    torch = zoo._torch()
    nn, F = torch.nn, torch.nn.functional
    dim = hidden // heads
    kv_heads = kv_heads or heads
    min_value = torch.finfo(torch.float32).min

    def split(t, n=heads):
        b, s = t.size(0), t.size(1)
        return t.view(b, s, n, dim).transpose(1, 2)

    def merge(t):
        b, s = t.size(0), t.size(2)
        return t.transpose(1, 2).contiguous().view(b, s, hidden)

    def padding(mask):  # HF's extended mask, [b, 1, 1, s]
        return (1.0 - mask[:, None, None, :].to(torch.float32)) * min_value

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            kv = kv_heads * dim
            if form == "multihead":
                self.mha = nn.MultiheadAttention(hidden, heads, batch_first=True)
            elif form == "gpt2_eager":
                self.c_attn = nn.Linear(hidden, 3 * hidden)
                self.register_buffer("causal", torch.tril(torch.ones(256, 256, dtype=torch.bool))
                                     .view(1, 1, 256, 256), persistent=False)
            else:
                bias = not form.startswith(("llama", "t5"))
                self.q = nn.Linear(hidden, hidden, bias=bias)
                self.k, self.v = nn.Linear(hidden, kv, bias=bias), nn.Linear(hidden, kv, bias=bias)
            if form == "t5_bias":
                self.relative = nn.Embedding(2 * 256, heads)
            if form != "multihead":
                self.o = nn.Linear(hidden, hidden)

        def forward(self, x, mask=None):
            if form == "multihead":
                return self.mha(x, x, x, need_weights=False)[0]
            if form == "gpt2_eager":
                q, k, v = (split(t) for t in self.c_attn(x).split(hidden, dim=2))
                scores = torch.matmul(q, k.transpose(-1, -2))
                scores = scores / torch.full([], v.size(-1) ** 0.5, dtype=scores.dtype)
                s = q.size(-2)
                causal = self.causal[:, :, :s, :s]
                scores = torch.where(causal, scores, torch.full([], min_value,
                                                                dtype=scores.dtype))
                probs = F.softmax(scores + padding(mask), dim=-1)
                return self.o(merge(torch.matmul(probs, v)))
            q, k, v = split(self.q(x)), split(self.k(x), kv_heads), split(self.v(x), kv_heads)
            if form.startswith("llama"):
                q, k = rotary(q), rotary(k)
                k, v = repeat_kv(k), repeat_kv(v)
            if form == "bert_eager":  # transformers 5.x's mask: all-true & padding, expanded
                b, s = x.size(0), x.size(1)
                visible = (torch.ones(b, 1, s, s, dtype=torch.bool)
                           & mask[:, None, None, :].bool()).expand(b, 1, s, s)
                bidirectional = torch.where(visible, torch.tensor(0.0), torch.tensor(min_value))
                scores = torch.matmul(q, k.transpose(-1, -2)) / dim ** 0.5 + bidirectional
                context = torch.matmul(F.softmax(scores, dim=-1), v)
            elif form == "t5_bias":
                s = x.size(1)
                position = torch.arange(s)
                bias = self.relative(position[None, :] - position[:, None] + 256)
                scores = torch.matmul(q, k.transpose(-1, -2)) + bias.permute(2, 0, 1)[None]
                scores = scores + padding(mask)
                context = torch.matmul(F.softmax(scores.float(), dim=-1).type_as(scores), v)
            elif form == "sdpa_padding":  # transformers' SDPA path: expanded to every query
                s = x.size(1)
                expanded = mask[:, None, None, :].expand(x.size(0), 1, s, s).to(torch.float32)
                inverted = 1.0 - expanded
                context = F.scaled_dot_product_attention(q, k, v, attn_mask=inverted.masked_fill(
                    inverted.to(torch.bool), min_value))
            elif form in ("sdpa_causal", "llama_sdpa"):
                context = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif form in ("llama_eager", "llama_masked"):
                s = x.size(1)
                if form == "llama_eager":
                    causal = torch.full((s, s), min_value).triu(1)[None, None]
                else:  # transformers 5.x: a key is visible if causal and not padding
                    position = torch.arange(s)
                    visible = ((position[None, :] <= position[:, None])[None, None]
                               & mask[:, None, None, :].bool())
                    causal = torch.where(visible, torch.tensor(0.0), torch.tensor(min_value))
                scores = torch.matmul(q, k.transpose(2, 3)) * dim ** -0.5 + causal
                probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
                context = torch.matmul(probs, v)
            else:
                raise ValueError(f"unknown attention form {form!r}")
            return self.o(merge(context))

    def rotary(t):  # Llama's rotate_half with cos/sin from the positions
        s = t.size(2)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        freqs = torch.arange(s, dtype=torch.float32)[:, None] * inv_freq[None]
        angles = torch.cat((freqs, freqs), dim=-1)
        cos, sin = angles.cos()[None, None], angles.sin()[None, None]
        half = t.size(-1) // 2
        rotated = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
        return t * cos + rotated * sin

    def repeat_kv(t):  # [b, kv, s, d] -> [b, heads, s, d], as transformers' repeat_kv writes it
        b, n, s, d = t.shape
        if n == heads:
            return t
        t = t[:, :, None, :, :].expand(b, n, heads // n, s, d)
        return t.reshape(b, n * heads // n, s, d)

    torch.manual_seed(0)
    return Block()


def export(form: str, path: Path, *, exporter: str = "legacy", opset: int = 17, batch: int = 2,
           seq: int = 32, **sizes) -> Path:
    """The block for `form` as an ONNX file, batch and sequence dynamic."""
    torch = zoo._torch()
    net = block(form, **sizes)
    hidden = sizes.get("hidden", 128)
    x = torch.randn(batch, seq, hidden)
    args, names = (x,), ["x"]
    axes = {"x": {0: "batch", 1: "sequence"}, "y": {0: "batch", 1: "sequence"}}
    if form in PADDED:
        args, names = (x, torch.ones(batch, seq, dtype=torch.long)), ["x", "attention_mask"]
        axes["attention_mask"] = {0: "batch", 1: "sequence"}
    # Exported with autograd off, nn.MultiheadAttention would take its fused fast path, which
    # the TorchScript exporter cannot write; users exporting a trainable model get the op-by-op
    # path this turns back on.
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        model = zoo._export(net, args, path, input_names=names, output_names=["y"],
                            dynamic_axes=axes, opset=opset, exporter=exporter)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    return zoo._save(model, path)
