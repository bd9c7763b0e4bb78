"""A coverage zoo of small real-world-style ONNX models, built here without downloads.

Each builder is `NAME(path: Path, **kw) -> Path`: it writes one ONNX file (plus its external data
file where the model has one) and returns the path of the .onnx file. `ZOO` maps a name to
`(builder, metadata)`; `metadata["input_shapes"]` fixes every dynamic dimension (pass it as
`ModelOptions(input_shapes=...)`), `metadata["dynamic"]` names the symbolic dims of the export.

The CNN families and the transformers are exported from PyTorch (`torch==2.13.0`, CPU wheel);
the opset-21 model is written with `onnx.helper`. Two exporters are covered, as users bring both:
- "legacy": the TorchScript exporter (`dynamo=False`, `dynamic_axes=`): any opset 7..23, about
  0.01-0.1 s per model; the classic Shape -> Gather -> Unsqueeze -> Concat -> Reshape patterns.
- "dynamo": the torch.export exporter (the default since torch 2.9; needs `onnxscript`): opset 18+
  only (it silently writes opset 18 when asked for less), IR version 10, ~0.6 s per model and
  ~2 s for the first export of a process; needs example sizes >= 2 on dynamic axes (a size of 1
  is specialised to a constant).

All models are deterministic (torch.manual_seed / fixed numpy seeds) and small (each builds with
TVM on 2 CPU cores in seconds).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import convert_model_to_external_data

IR_VERSION = 9  # every ONNX Runtime release since 1.15 reads it
BATCH = 2       # example sizes used for export (>= 2: dynamo specialises a size of 1)
SEQ = 16
IMAGE = (3, 32, 32)
VOCAB = 64


# ---------------------------------------------------------------------------------------------
# export helpers


def _torch():
    import torch

    return torch


def _export(module, args: tuple, path: Path, *, input_names, output_names, dynamic_axes,
            opset: int = 17, exporter: str = "legacy") -> onnx.ModelProto:
    """torch.onnx.export with either exporter; returns the in-memory model (not yet saved)."""
    torch = _torch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    tmp = path.with_name(path.stem + ".export.onnx")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=opset,
                              input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
        elif exporter == "dynamo":
            # The dynamo exporter prints progress lines to stdout and logs a warning per missing
            # torchvision op; keep test output clean.
            logger = logging.getLogger("torch.onnx._internal.exporter._registration")
            level = logger.level
            logger.setLevel(logging.ERROR)
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    torch.onnx.export(module, args, str(tmp), dynamo=True, opset_version=opset,
                                      input_names=input_names, output_names=output_names,
                                      dynamic_axes=dynamic_axes, external_data=False)
            finally:
                logger.setLevel(level)
        else:
            raise ValueError(f"exporter must be 'legacy' or 'dynamo', not {exporter!r}")
    model = onnx.load(str(tmp))
    tmp.unlink()
    return model


def _save(model: onnx.ModelProto, path: Path, *, external_data: bool = False,
          keep_int64_inline: bool = True) -> Path:
    path = Path(path)
    model.ir_version = min(model.ir_version, IR_VERSION)
    model.producer_name = model.producer_name or "tvmopt-tests"
    # The dynamo exporter annotates every node with FX provenance whose symbol names change from
    # run to run; drop it so that a model's bytes (and its sha256) are reproducible.
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.checker.check_model(model)
    if external_data:
        location = path.name + ".data"
        (path.parent / location).unlink(missing_ok=True)  # onnx refuses to overwrite it
        # Every tensor external (size_threshold=0) except int64 ones: those are shapes and axes
        # (the dynamo exporter makes Unsqueeze axes initializers), and ONNX Runtime 1.31 refuses
        # to load a model whose shape-inference inputs are external ("Cannot parse data from
        # external tensors. Please load external data into raw data for tensor").
        convert_model_to_external_data(model, all_tensors_to_one_file=True, location=location,
                                       size_threshold=0)
        for tensor in model.graph.initializer:
            if tensor.data_type == TensorProto.INT64 and keep_int64_inline:
                tensor.data_location = TensorProto.DEFAULT
                del tensor.external_data[:]
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path))
    return path


def _randomize_bn(module) -> None:
    """Non-trivial batch-norm statistics (PyTorch's defaults make BN an identity)."""
    torch = _torch()
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def _export_cnn(net, path, *, opset=17, exporter="legacy", batch="batch") -> Path:
    torch = _torch()
    _randomize_bn(net)
    x = torch.randn(BATCH, *IMAGE)
    dyn = {"input": {0: batch}, "logits": {0: batch}} if batch else None
    model = _export(net, (x,), path, input_names=["input"], output_names=["logits"],
                    dynamic_axes=dyn, opset=opset, exporter=exporter)
    return _save(model, path)


# ---------------------------------------------------------------------------------------------
# CNN families (all: input "input" N x 3 x 32 x 32 float32, output "logits" N x 10)


def _conv_bn(cin, cout, k=3, stride=1, groups=1, act="relu"):
    nn = _torch().nn
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "relu6":
        layers.append(nn.ReLU6(inplace=True))
    elif act == "hardswish":
        layers.append(nn.Hardswish())
    return nn.Sequential(*layers)


def resnet(path: Path, *, opset: int = 17, exporter: str = "legacy") -> Path:
    """ResNet-style: basic blocks with identity and 1x1-conv (strided) shortcuts, max pool."""
    torch = _torch()
    nn = torch.nn

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = _conv_bn(cin, cout, 3, stride)
            self.conv2 = _conv_bn(cout, cout, 3, 1, act=None)
            self.down = (_conv_bn(cin, cout, 1, stride, act=None)
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return torch.relu(self.conv2(self.conv1(x)) + self.down(x))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = _conv_bn(3, 16, 3, 1)
            self.pool = nn.MaxPool2d(3, 2, 1)
            self.layers = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2))
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.layers(self.pool(self.stem(x)))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    torch.manual_seed(0)
    return _export_cnn(ResNet(), path, opset=opset, exporter=exporter)


def mobilenet_v2(path: Path, *, opset: int = 17, exporter: str = "legacy") -> Path:
    """MobileNetV2-style inverted residuals: 1x1 expand, 3x3 depthwise, 1x1 project, ReLU6."""
    torch = _torch()
    nn = torch.nn

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            self.use_res = stride == 1 and cin == cout
            self.block = nn.Sequential(
                _conv_bn(cin, hidden, 1, act="relu6"),
                _conv_bn(hidden, hidden, 3, stride, groups=hidden, act="relu6"),
                _conv_bn(hidden, cout, 1, act=None),
            )

        def forward(self, x):
            return x + self.block(x) if self.use_res else self.block(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                _conv_bn(3, 16, 3, 2, act="relu6"),
                InvertedResidual(16, 16, 1, 2),
                InvertedResidual(16, 24, 2, 4),
                InvertedResidual(24, 24, 1, 4),
                _conv_bn(24, 32, 1, act="relu6"),
            )
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, 10))

        def forward(self, x):
            x = self.features(x).mean([2, 3])  # ReduceMean, as torchvision's MobileNetV2
            return self.classifier(x)

    torch.manual_seed(0)
    return _export_cnn(MobileNetV2(), path, opset=opset, exporter=exporter)


def se_net(path: Path, *, opset: int = 17, exporter: str = "legacy") -> Path:
    """Squeeze-excitation (SE-ResNet / MobileNetV3 style): pool -> view(b, c) -> FC -> ReLU -> FC
    -> Hardsigmoid/Sigmoid -> scale; Hardswish activations; the view uses x.size() arithmetic."""
    torch = _torch()
    nn = torch.nn

    class SqueezeExcite(nn.Module):
        def __init__(self, c, reduction=4, gate="sigmoid"):
            super().__init__()
            self.fc1 = nn.Linear(c, c // reduction)
            self.fc2 = nn.Linear(c // reduction, c)
            self.gate = nn.Sigmoid() if gate == "sigmoid" else nn.Hardsigmoid()

        def forward(self, x):
            b, c, _, _ = x.size()
            s = nn.functional.adaptive_avg_pool2d(x, 1).view(b, c)
            s = self.gate(self.fc2(torch.relu(self.fc1(s)))).view(b, c, 1, 1)
            return x * s

    class SENet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = _conv_bn(3, 16, 3, 2, act="hardswish")
            self.conv1 = _conv_bn(16, 16, 3, 1)
            self.se1 = SqueezeExcite(16, gate="sigmoid")
            self.conv2 = _conv_bn(16, 32, 3, 2, act="hardswish")
            self.se2 = SqueezeExcite(32, gate="hard")
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.stem(x)
            x = torch.relu(x + self.se1(self.conv1(x)))
            x = self.se2(self.conv2(x))
            return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))

    torch.manual_seed(0)
    return _export_cnn(SENet(), path, opset=opset, exporter=exporter)


def shufflenet(path: Path, *, opset: int = 17, exporter: str = "legacy") -> Path:
    """ShuffleNetV2-style: chunk (Split), branch convs, concat, channel shuffle via
    view/transpose/view built from x.size() (Shape/Gather/Div/Concat/Reshape/Transpose)."""
    torch = _torch()
    nn = torch.nn

    def channel_shuffle(x, groups: int):
        b, c, h, w = x.size()
        x = x.view(b, groups, c // groups, h, w)
        x = torch.transpose(x, 1, 2).contiguous()
        return x.view(b, -1, h, w)

    class ShuffleUnit(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.stride = stride
            branch = cout // 2
            if stride > 1:
                self.branch1 = nn.Sequential(
                    _conv_bn(cin, cin, 3, stride, groups=cin, act=None),
                    _conv_bn(cin, branch, 1))
            src = cin if stride > 1 else branch
            self.branch2 = nn.Sequential(
                _conv_bn(src, branch, 1),
                _conv_bn(branch, branch, 3, stride, groups=branch, act=None),
                _conv_bn(branch, branch, 1))

        def forward(self, x):
            if self.stride == 1:
                x1, x2 = x.chunk(2, dim=1)
                out = torch.cat((x1, self.branch2(x2)), dim=1)
            else:
                out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
            return channel_shuffle(out, 2)

    class ShuffleNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = _conv_bn(3, 16, 3, 1)
            self.pool = nn.MaxPool2d(3, 2, 1)
            self.stages = nn.Sequential(ShuffleUnit(16, 32, 2), ShuffleUnit(32, 32, 1))
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.stages(self.pool(self.stem(x)))
            return self.fc(x.mean([2, 3]))

    torch.manual_seed(0)
    return _export_cnn(ShuffleNet(), path, opset=opset, exporter=exporter)


def densenet(path: Path, *, opset: int = 17, exporter: str = "legacy") -> Path:
    """DenseNet-style: BN-ReLU-Conv dense layers concatenating all previous features, a
    transition (1x1 conv + AvgPool), growth rate 8."""
    torch = _torch()
    nn = torch.nn

    class DenseLayer(nn.Module):
        def __init__(self, cin, growth):
            super().__init__()
            self.body = nn.Sequential(
                nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                nn.Conv2d(cin, 2 * growth, 1, bias=False),
                nn.BatchNorm2d(2 * growth), nn.ReLU(inplace=True),
                nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False))

        def forward(self, features):
            return self.body(torch.cat(features, 1))

    class DenseBlock(nn.Module):
        def __init__(self, cin, growth, n):
            super().__init__()
            self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth) for i in range(n))

        def forward(self, x):
            features = [x]
            for layer in self.layers:
                features.append(layer(features))
            return torch.cat(features, 1)

    class DenseNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
            self.block1 = DenseBlock(16, 8, 3)  # -> 40 channels
            self.trans = nn.Sequential(nn.BatchNorm2d(40), nn.ReLU(inplace=True),
                                       nn.Conv2d(40, 20, 1, bias=False), nn.AvgPool2d(2, 2))
            self.block2 = DenseBlock(20, 8, 2)  # -> 36 channels
            self.norm = nn.BatchNorm2d(36)
            self.fc = nn.Linear(36, 10)

        def forward(self, x):
            x = self.block2(self.trans(self.block1(self.stem(x))))
            x = torch.relu(self.norm(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, (1, 1)), 1))

    torch.manual_seed(0)
    return _export_cnn(DenseNet(), path, opset=opset, exporter=exporter)


# ---------------------------------------------------------------------------------------------
# transformers


def _attention_module(hidden, heads):
    torch = _torch()
    nn = torch.nn

    class SelfAttention(nn.Module):
        """HF-style: q/k/v Linear, heads split with view(b, s, h, d) from x.size()."""

        def __init__(self):
            super().__init__()
            self.heads, self.dim = heads, hidden // heads
            self.q, self.k, self.v = (nn.Linear(hidden, hidden) for _ in range(3))
            self.o = nn.Linear(hidden, hidden)

        def split(self, x):
            b, s = x.size(0), x.size(1)
            return x.view(b, s, self.heads, self.dim).transpose(1, 2)

        def forward(self, x, bias):
            b, s = x.size(0), x.size(1)
            q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / (self.dim ** 0.5) + bias
            ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
            return self.o(ctx.transpose(1, 2).contiguous().view(b, s, self.heads * self.dim))

    return SelfAttention()


def _post_ln_layer(attention, hidden):
    """BERT's encoder layer: x = LN(x + attention(x, mask)); LN(x + FFN(x)), erf GELU."""
    nn = _torch().nn

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = attention
            self.ln1 = nn.LayerNorm(hidden, eps=1e-12)
            self.ff1 = nn.Linear(hidden, 4 * hidden)
            self.ff2 = nn.Linear(4 * hidden, hidden)
            self.ln2 = nn.LayerNorm(hidden, eps=1e-12)

        def forward(self, x, mask):
            x = self.ln1(x + self.attention(x, mask))
            return self.ln2(x + self.ff2(nn.functional.gelu(self.ff1(x))))

    return Layer()


def bert_encoder(path: Path, *, opset: int = 17, exporter: str = "legacy",
                 hidden: int = 32, heads: int = 4, layers: int = 2) -> Path:
    """BERT-style encoder: int64 input_ids + attention_mask (batch x seq, both dynamic), word +
    position (arange of the sequence length) + token-type embeddings, post-LN layers with GELU
    (erf), extended attention mask, outputs last_hidden_state and a tanh pooler."""
    torch = _torch()
    nn = torch.nn

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.word = nn.Embedding(VOCAB, hidden)
            self.pos = nn.Embedding(128, hidden)
            self.token_type = nn.Embedding(2, hidden)
            self.ln = nn.LayerNorm(hidden, eps=1e-12)
            self.layers = nn.ModuleList(_post_ln_layer(_attention_module(hidden, heads), hidden)
                                        for _ in range(layers))
            self.pool = nn.Linear(hidden, hidden)

        def forward(self, input_ids, attention_mask):
            seq = input_ids.size(1)
            pos = torch.arange(seq, dtype=torch.long, device=input_ids.device).unsqueeze(0)
            types = torch.zeros_like(input_ids)
            x = self.ln(self.word(input_ids) + self.pos(pos) + self.token_type(types))
            # (1 - mask) * -10000, with any non-zero mask value counting as "attend"
            keep = (attention_mask > 0).to(x.dtype)[:, None, None, :]
            bias = (1.0 - keep) * -10000.0
            for layer in self.layers:
                x = layer(x, bias)
            return x, torch.tanh(self.pool(x[:, 0]))

    torch.manual_seed(0)
    net = Bert()
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    model = _export(net, (ids, mask), path, input_names=["input_ids", "attention_mask"],
                    output_names=["last_hidden_state", "pooler_output"],
                    dynamic_axes={"input_ids": axes, "attention_mask": axes,
                                  "last_hidden_state": axes, "pooler_output": {0: "batch"}},
                    opset=opset, exporter=exporter)
    return _save(model, path)


def gpt_decoder(path: Path, *, opset: int = 17, exporter: str = "legacy", hidden: int = 64,
                heads: int = 4, layers: int = 2, external_data: bool = True,
                vocab: int = VOCAB) -> Path:
    """GPT-2-style decoder: pre-LN blocks, tanh-GELU, causal mask built from the sequence length
    (Shape/Gather/Range/Unsqueeze/Less/Where), head split via view from x.size() (Concat +
    Reshape), LM head tied to the token embedding. Saved with all weights in one external file
    `<name>.onnx.data` (size_threshold=0)."""
    torch = _torch()
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(hidden)
            self.attn = _attention_module(hidden, heads)
            self.ln2 = nn.LayerNorm(hidden)
            self.fc = nn.Linear(hidden, 4 * hidden)
            self.proj = nn.Linear(4 * hidden, hidden)

        def forward(self, x, bias):
            x = x + self.attn(self.ln1(x), bias)
            return x + self.proj(nn.functional.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab, hidden)
            self.wpe = nn.Embedding(128, hidden)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.ln_f = nn.LayerNorm(hidden)
            self.head = nn.Linear(hidden, vocab, bias=False)
            self.head.weight = self.wte.weight  # tied: one initializer, Gather + MatMul users

        def forward(self, input_ids):
            seq = input_ids.shape[1]
            pos = torch.arange(0, seq, dtype=torch.long, device=input_ids.device)
            x = self.wte(input_ids) + self.wpe(pos)[None]
            i = torch.arange(seq, device=input_ids.device)
            causal = i[None, :] > i[:, None]  # True above the diagonal: future tokens
            bias = torch.where(causal, torch.tensor(-1e4), torch.tensor(0.0))[None, None]
            for block in self.blocks:
                x = block(x, bias)
            return self.head(self.ln_f(x))

    torch.manual_seed(0)
    net = GPT()
    ids = torch.randint(0, vocab, (BATCH, SEQ))
    model = _export(net, (ids,), path, input_names=["input_ids"], output_names=["logits"],
                    dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                  "logits": {0: "batch", 1: "sequence"}},
                    opset=opset, exporter=exporter)
    return _save(model, path, external_data=external_data)


# ---------------------------------------------------------------------------------------------
# fp16 hazards: what broke real users' models in fp16 (NaN from float32-min masks, ops the
# mixed-precision pass could not convert)


def _float32_min_bias(attention_mask, dtype):
    """Hugging Face's extended mask: 0 where attended, float32's most negative value elsewhere
    (any non-zero mask value counts as "attend", so random integer inputs make sense)."""
    torch = _torch()
    keep = (attention_mask > 0).to(dtype)[:, None, None, :]
    return (1.0 - keep) * torch.finfo(torch.float32).min


def _export_encoder(net, path: Path, *, opset: int, exporter: str) -> Path:
    """An encoder taking (input_ids, attention_mask), returning last_hidden_state."""
    torch = _torch()
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    model = _export(net, (ids, mask), path, input_names=["input_ids", "attention_mask"],
                    output_names=["last_hidden_state"],
                    dynamic_axes={"input_ids": axes, "attention_mask": axes,
                                  "last_hidden_state": axes},
                    opset=opset, exporter=exporter)
    return _save(model, path)


def t5_encoder(path: Path, *, opset: int = 17, exporter: str = "legacy", hidden: int = 32,
               heads: int = 4, layers: int = 2, buckets: int = 32, max_distance: int = 64) -> Path:
    """T5-style encoder: RMS norm (pre-norm), bias-free projections, unscaled scores plus a
    bucketed relative-position bias (log-spaced buckets computed from the sequence length) and a
    float32-min attention mask, softmax in float32, ReLU feed-forward."""
    import math

    torch = _torch()
    nn = torch.nn

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(1.0 + 0.1 * torch.randn(hidden))

        def forward(self, x):
            variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
            return self.weight * (x * torch.rsqrt(variance + 1e-6))

    def relative_buckets(seq, device):
        context = torch.arange(seq, dtype=torch.long, device=device)[:, None]
        memory = torch.arange(seq, dtype=torch.long, device=device)[None, :]
        relative = memory - context
        half = buckets // 2  # bidirectional: one half for each direction
        bucket = (relative > 0).to(torch.long) * half
        relative = torch.abs(relative)
        exact = half // 2
        large = exact + (torch.log(relative.float() / exact) / math.log(max_distance / exact)
                         * (half - exact)).to(torch.long)
        large = torch.min(large, torch.full_like(large, half - 1))
        return bucket + torch.where(relative < exact, relative, large)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden, bias=False)
                                              for _ in range(4))

        def forward(self, x, position_bias):
            b, s = x.size(0), x.size(1)

            def split(t):
                return t.view(b, s, heads, hidden // heads).transpose(1, 2)

            scores = torch.matmul(split(self.q(x)), split(self.k(x)).transpose(-1, -2))
            weights = torch.softmax((scores + position_bias).float(), dim=-1).type_as(scores)
            ctx = torch.matmul(weights, split(self.v(x))).transpose(1, 2).contiguous()
            return self.o(ctx.view(b, s, hidden))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = RMSNorm(), RMSNorm()
            self.attn = Attention()
            self.wi = nn.Linear(hidden, 4 * hidden, bias=False)
            self.wo = nn.Linear(4 * hidden, hidden, bias=False)

        def forward(self, x, position_bias):
            x = x + self.attn(self.norm1(x), position_bias)
            return x + self.wo(torch.relu(self.wi(self.norm2(x))))

    class T5(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, hidden)
            self.relative_bias = nn.Embedding(buckets, heads)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))
            self.norm = RMSNorm()

        def forward(self, input_ids, attention_mask):
            x = self.embed(input_ids)
            seq = input_ids.size(1)
            bias = self.relative_bias(relative_buckets(seq, input_ids.device))  # (q, k, heads)
            position_bias = bias.permute(2, 0, 1).unsqueeze(0)
            position_bias = position_bias + _float32_min_bias(attention_mask, x.dtype)
            for layer in self.layers:
                x = layer(x, position_bias)
            return self.norm(x)

    torch.manual_seed(0)
    return _export_encoder(T5(), path, opset=opset, exporter=exporter)


def distilbert_encoder(path: Path, *, opset: int = 17, exporter: str = "legacy",
                       hidden: int = 32, heads: int = 4, layers: int = 2) -> Path:
    """DistilBERT-style encoder: queries scaled before QK^T, masked positions filled with
    float32's most negative value (`masked_fill(mask == 0, finfo.min)`: a Where on a constant),
    post-LN layers with GELU, no token types, no pooler."""
    torch = _torch()
    nn = torch.nn

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.out = (nn.Linear(hidden, hidden) for _ in range(4))

        def forward(self, x, attention_mask):
            b, s = x.size(0), x.size(1)
            dim = hidden // heads

            def split(t):
                return t.view(b, s, heads, dim).transpose(1, 2)

            q = split(self.q(x)) / dim ** 0.5
            scores = torch.matmul(q, split(self.k(x)).transpose(2, 3))
            masked = (attention_mask == 0).view(b, 1, 1, s).expand_as(scores)
            scores = scores.masked_fill(masked, torch.tensor(torch.finfo(scores.dtype).min))
            ctx = torch.matmul(nn.functional.softmax(scores, dim=-1), split(self.v(x)))
            return self.out(ctx.transpose(1, 2).contiguous().view(b, s, hidden))

    class DistilBert(nn.Module):
        def __init__(self):
            super().__init__()
            self.word = nn.Embedding(VOCAB, hidden)
            self.position = nn.Embedding(128, hidden)
            self.norm = nn.LayerNorm(hidden, eps=1e-12)
            self.layers = nn.ModuleList(_post_ln_layer(Attention(), hidden)
                                        for _ in range(layers))

        def forward(self, input_ids, attention_mask):
            pos = torch.arange(input_ids.size(1), dtype=torch.long, device=input_ids.device)
            x = self.norm(self.word(input_ids) + self.position(pos)[None])
            for layer in self.layers:
                x = layer(x, attention_mask)
            return x

    torch.manual_seed(0)
    return _export_encoder(DistilBert(), path, opset=opset, exporter=exporter)


def windowed_vit(path: Path, *, opset: int = 17, exporter: str = "legacy", dim: int = 32,
                 heads: int = 2, window: int = 4) -> Path:
    """Swin-style vision transformer: 4x4 patch embedding, two blocks of window attention (the
    second on windows shifted with torch.roll and masked with -100), a relative-position bias
    table gathered through a fixed index, window partition/reverse via view + permute, GELU
    MLPs, mean-pooled head."""
    torch = _torch()
    nn = torch.nn
    side = IMAGE[1] // 4  # tokens per side after the patch embedding
    tokens = window * window

    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                        indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    relative_index = relative[..., 0] * (2 * window - 1) + relative[..., 1]

    def partition(x):  # (b, h, w, c) -> (b * windows, tokens, c)
        b, h, w, c = x.shape
        x = x.view(b, h // window, window, w // window, window, c)
        return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, tokens, c)

    def reverse(windows, b):  # inverse of partition
        x = windows.view(b, side // window, side // window, window, window, dim)
        return x.permute(0, 1, 3, 2, 4, 5).reshape(b, side, side, dim)

    def shifted_window_mask(shift):
        regions = torch.zeros(side, side)
        cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
        for label, (hs, ws) in enumerate((h, w) for h in cuts for w in cuts):
            regions[hs, ws] = label
        labels = partition(regions[None, :, :, None].expand(1, side, side, dim))[..., 0]
        different = labels[:, None, :] != labels[:, :, None]
        return torch.where(different, torch.tensor(-100.0), torch.tensor(0.0))  # (windows, t, t)

    class Block(nn.Module):
        def __init__(self, shift):
            super().__init__()
            self.shift = shift
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
            self.bias_table = nn.Parameter(0.1 * torch.randn((2 * window - 1) ** 2, heads))
            self.register_buffer("relative_index", relative_index.flatten(), persistent=False)
            self.register_buffer("mask", shifted_window_mask(shift) if shift else None,
                                 persistent=False)
            self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

        def attention(self, windows):
            n = windows.size(0)
            qkv = self.qkv(windows).view(n, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0] * (dim // heads) ** -0.5, qkv[1], qkv[2]
            scores = q @ k.transpose(-2, -1)
            bias = self.bias_table[self.relative_index].view(tokens, tokens, heads)
            scores = scores + bias.permute(2, 0, 1)[None]
            if self.mask is not None:
                count = self.mask.size(0)
                scores = scores.view(n // count, count, heads, tokens, tokens) + \
                    self.mask[None, :, None]
                scores = scores.view(n, heads, tokens, tokens)
            ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, tokens, dim)
            return self.proj(ctx)

        def forward(self, x):  # (b, side * side, dim)
            b = x.size(0)
            y = self.norm1(x).view(b, side, side, dim)
            if self.shift:
                y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
            y = reverse(self.attention(partition(y)), b)
            if self.shift:
                y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
            x = x + y.reshape(b, side * side, dim)
            return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))

    class Swin(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(IMAGE[0], dim, 4, stride=4)
            self.blocks = nn.Sequential(Block(0), Block(window // 2))
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, 10)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            return self.head(self.norm(self.blocks(x)).mean(1))

    torch.manual_seed(0)
    return _export_cnn(Swin(), path, opset=opset, exporter=exporter)


def moe_router(path: Path, *, opset: int = 17, exporter: str = "legacy", hidden: int = 32,
               experts: int = 4, top: int = 2) -> Path:
    """Mixture-of-experts layer: softmax router, TopK experts per token, gates scattered back to
    a dense (token, expert) matrix (ScatterElements), experts applied with Einsum, combined with
    a gate-weighted Einsum; input x (batch x sequence x hidden, both dynamic)."""
    torch = _torch()
    nn = torch.nn

    class MoE(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(hidden)
            self.router = nn.Linear(hidden, experts)
            # Well-separated router logits: a near-tie could pick other experts in fp16, a
            # legitimate difference that a numerical check would flag.
            with torch.no_grad():
                self.router.weight.mul_(8.0)
            self.w1 = nn.Parameter(torch.randn(experts, hidden, 2 * hidden) * hidden ** -0.5)
            self.w2 = nn.Parameter(torch.randn(experts, 2 * hidden, hidden) * hidden ** -0.5)

        def forward(self, x):
            h = self.norm(x)
            probs = torch.softmax(self.router(h), dim=-1)
            weights, chosen = torch.topk(probs, top, dim=-1)
            weights = weights / weights.sum(-1, keepdim=True)
            gates = torch.zeros_like(probs).scatter(-1, chosen, weights)
            inner = nn.functional.silu(torch.einsum("bsh,ehf->bsef", h, self.w1))
            out = torch.einsum("bsef,efh->bseh", inner, self.w2)
            return x + torch.einsum("bse,bseh->bsh", gates, out)

    torch.manual_seed(0)
    axes = {0: "batch", 1: "sequence"}
    model = _export(MoE(), (torch.randn(BATCH, SEQ, hidden),), path, input_names=["x"],
                    output_names=["y"], dynamic_axes={"x": axes, "y": axes}, opset=opset,
                    exporter=exporter)
    return _save(model, path)


# ---------------------------------------------------------------------------------------------
# written with onnx.helper


def recurrent_tagger(path: Path, *, opset: int = 17, exporter: str = "legacy") -> Path:
    """Sequence tagger: token embedding -> 2-layer bidirectional LSTM started from learned initial
    states -> batch-first GRU -> per-token head. Recurrent ops have no TVM converter; tvmopt
    unrolls them (tvmopt/frontend/recurrent.py). Inputs input_ids (batch x sequence, both dynamic)."""
    torch = _torch()
    nn = torch.nn

    class Tagger(nn.Module):
        def __init__(self, hidden=24):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, 16)
            self.lstm = nn.LSTM(16, hidden, num_layers=2, bidirectional=True)
            self.h0 = nn.Parameter(torch.randn(4, 1, hidden) * 0.5)
            self.c0 = nn.Parameter(torch.randn(4, 1, hidden) * 0.5)
            self.gru = nn.GRU(2 * hidden, hidden, batch_first=True)
            self.head = nn.Linear(hidden, 5)

        def forward(self, input_ids):
            x = self.embed(input_ids).transpose(0, 1)            # sequence-first for the LSTM
            batch = input_ids.size(0)
            state = (self.h0.expand(-1, batch, -1).contiguous(),
                     self.c0.expand(-1, batch, -1).contiguous())
            y, _ = self.lstm(x, state)
            y, _ = self.gru(y.transpose(0, 1))                   # batch-first
            return self.head(y)

    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    # torch.export (2.11) unrolls the recurrences over the example's length: a static sequence.
    axes = {0: "batch", 1: "sequence"} if exporter == "legacy" else {0: "batch"}
    model = _export(Tagger(), (ids,), path, input_names=["input_ids"], output_names=["tags"],
                    dynamic_axes={"input_ids": axes, "tags": axes}, opset=opset,
                    exporter=exporter)
    return _save(model, path)


def upsampling_decoder(path: Path, *, opset: int = 11, exporter: str = "legacy") -> Path:
    """Segmentation-style decoder: strided conv encoder, then `F.interpolate(size=...)` back to
    the input's size (bilinear and nearest): at opset 11 every such Resize has an empty `scales`
    input next to `sizes`."""
    torch = _torch()
    nn = torch.nn
    F = nn.functional

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
            self.out = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            size = x.shape[-2:]
            y = self.down(x)
            up = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            return self.out(up + F.interpolate(y, size=size, mode="nearest"))

    torch.manual_seed(0)
    model = _export(Decoder(), (torch.randn(BATCH, *IMAGE),), path, input_names=["input"],
                    output_names=["mask"], dynamic_axes={"input": {0: "batch"},
                                                         "mask": {0: "batch"}},
                    opset=opset, exporter=exporter)
    return _save(model, path)


def helper_opset21(path: Path, *, opset: int = 21, batch="batch", seq="sequence") -> Path:
    """A transformer block written by hand at opset 21, in the idioms of opset >= 18 exports:
    Reshape targets from Shape(start=, end=) + Concat, Gelu (opset 20), LayerNormalization,
    Split with a `num_outputs` attribute (opset 18), ReduceMean with axes as an input (opset 18),
    Softmax, Trilu causal mask, dynamic batch and sequence axes."""
    rng = np.random.default_rng(21)
    h, heads = 32, 4
    d = h // heads

    def w(name, shape, scale=0.2):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32),
                                       name)

    def i64(name, values):
        return numpy_helper.from_array(np.array(values, np.int64), name)

    inits = [
        w("ln_g", (h,)), w("ln_b", (h,)), w("qkv_w", (h, 3 * h)), w("qkv_b", (3 * h,)),
        w("o_w", (h, h)), w("fc_w", (h, 4 * h)), w("fc_b", (4 * h,)), w("proj_w", (4 * h, h)),
        i64("heads_dims", [heads, d]), i64("minus1", [-1]), i64("axis_last", [-1]),
        numpy_helper.from_array(np.array(1.0 / np.sqrt(d), np.float32), "scale"),
        numpy_helper.from_array(np.array([-1e4], np.float32), "neg"),
        numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
    ]
    n = helper.make_node
    nodes = [
        n("Shape", ["x"], ["bs"], name="shape_bs", start=0, end=2),        # [batch, seq]
        n("Concat", ["bs", "heads_dims"], ["split_shape"], name="cat_split", axis=0),
        n("Concat", ["bs", "minus1"], ["merge_shape"], name="cat_merge", axis=0),
        n("LayerNormalization", ["x", "ln_g", "ln_b"], ["xn"], name="ln", axis=-1,
          epsilon=1e-5),
        n("MatMul", ["xn", "qkv_w"], ["qkv0"], name="qkv_mm"),
        n("Add", ["qkv0", "qkv_b"], ["qkv"], name="qkv_add"),
        n("Split", ["qkv"], ["q0", "k0", "v0"], name="split_qkv", axis=-1, num_outputs=3),
        *[n("Reshape", [f"{t}0", "split_shape"], [f"{t}1"], name=f"reshape_{t}")
          for t in "qkv"],
        n("Transpose", ["q1"], ["q"], name="tq", perm=[0, 2, 1, 3]),
        n("Transpose", ["k1"], ["kt"], name="tk", perm=[0, 2, 3, 1]),
        n("Transpose", ["v1"], ["v"], name="tv", perm=[0, 2, 1, 3]),
        n("MatMul", ["q", "kt"], ["s0"], name="scores"),
        n("Mul", ["s0", "scale"], ["s1"], name="scale_scores"),
        # causal mask: Trilu(upper, k=1) of a seq x seq block of -1e4
        n("Shape", ["x"], ["seq1"], name="shape_seq", start=1, end=2),
        n("Concat", ["seq1", "seq1"], ["ss"], name="cat_ss", axis=0),
        n("Expand", ["neg", "ss"], ["negs"], name="expand_neg"),
        n("Trilu", ["negs", "one"], ["mask"], name="trilu", upper=1),
        n("Add", ["s1", "mask"], ["s2"], name="add_mask"),
        n("Softmax", ["s2"], ["p"], name="softmax", axis=-1),
        n("MatMul", ["p", "v"], ["c0"], name="ctx"),
        n("Transpose", ["c0"], ["c1"], name="tctx", perm=[0, 2, 1, 3]),
        n("Reshape", ["c1", "merge_shape"], ["c2"], name="merge_heads"),
        n("MatMul", ["c2", "o_w"], ["a"], name="o_proj"),
        n("Add", ["x", "a"], ["r1"], name="res1"),
        n("MatMul", ["r1", "fc_w"], ["f0"], name="fc"),
        n("Add", ["f0", "fc_b"], ["f1"], name="fc_bias"),
        n("Gelu", ["f1"], ["f2"], name="gelu", approximate="none"),
        n("MatMul", ["f2", "proj_w"], ["f3"], name="proj"),
        n("Add", ["r1", "f3"], ["y"], name="res2"),
        n("ReduceMean", ["y", "axis_last"], ["y_mean"], name="reduce_mean", keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "helper_opset21",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, h])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, h]),
         helper.make_tensor_value_info("y_mean", TensorProto.FLOAT, [batch, seq])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="tvmopt-tests")
    model.ir_version = 10  # opset 21 needs IR >= 10
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))
    return Path(path)


# ---------------------------------------------------------------------------------------------
# detection and segmentation CNNs (input N x 3 x 64 x 64): what the CPU's packed layout cannot
# carry everywhere (channel splits, transposed convs, resizes) next to what it can


DETECTOR_IMAGE = (3, 64, 64)


def _conv_bn_silu(cin, cout, k=1, stride=1):
    """ultralytics' Conv: conv + batch norm + SiLU."""
    nn = _torch().nn
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.SiLU())


def _export_image_model(net, path, *, input_name, output_name, opset, exporter) -> Path:
    torch = _torch()
    _randomize_bn(net)
    dyn = {input_name: {0: "batch"}, output_name: {0: "batch"}}
    model = _export(net, (torch.randn(BATCH, *DETECTOR_IMAGE),), path, input_names=[input_name],
                    output_names=[output_name], dynamic_axes=dyn, opset=opset, exporter=exporter)
    return _save(model, path)


def yolo_detector(path: Path, *, opset: int = 17, exporter: str = "legacy") -> Path:
    """YOLOv8-style detector: Conv+BN+SiLU, C2f blocks splitting their channels into halves with
    `split((c, c), 1)` (an ONNX Split by sizes; halves of 16 channels, one AVX-512 block, and of
    8, less than one) and concatenating the branches, an SPPF of three chained 5x5 max pools, an
    FPN (nearest 2x upsample + concat) and a PAN (strided conv + concat), and a head flattening
    both scales into N x 8 x 320 (4 box values, 4 class scores through a sigmoid)."""
    torch = _torch()
    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, c, shortcut):
            super().__init__()
            self.body = nn.Sequential(_conv_bn_silu(c, c, 3), _conv_bn_silu(c, c, 3))
            self.shortcut = shortcut

        def forward(self, x):
            return x + self.body(x) if self.shortcut else self.body(x)

    class C2f(nn.Module):
        def __init__(self, cin, cout, shortcut=True):
            super().__init__()
            self.c = cout // 2
            self.cv1 = _conv_bn_silu(cin, 2 * self.c)
            self.m = Bottleneck(self.c, shortcut)
            self.cv2 = _conv_bn_silu(3 * self.c, cout)

        def forward(self, x):
            y = list(self.cv1(x).split((self.c, self.c), 1))
            y.append(self.m(y[-1]))
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.cv1, self.cv2 = _conv_bn_silu(c, c // 2), _conv_bn_silu(c // 2 * 4, c)
            self.pool = nn.MaxPool2d(5, 1, 2)

        def forward(self, x):
            y = [self.cv1(x)]
            y.extend(self.pool(y[-1]) for _ in range(3))
            return self.cv2(torch.cat(y, 1))

    class Detector(nn.Module):
        def __init__(self, classes=4):
            super().__init__()
            self.p3 = nn.Sequential(_conv_bn_silu(3, 16, 3, 2), _conv_bn_silu(16, 32, 3, 2),
                                    C2f(32, 32))                                    # 16 x 16
            self.p4 = nn.Sequential(_conv_bn_silu(32, 32, 3, 2), C2f(32, 32), SPPF(32))  # 8 x 8
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.top3 = C2f(64, 16, shortcut=False)                                 # FPN
            self.down3 = _conv_bn_silu(16, 16, 3, 2)
            self.bottom4 = C2f(48, 32, shortcut=False)                              # PAN
            self.heads = nn.ModuleList(nn.Conv2d(c, 4 + classes, 1) for c in (16, 32))

        def forward(self, x):
            p3 = self.p3(x)
            p4 = self.p4(p3)
            t3 = self.top3(torch.cat([self.up(p4), p3], 1))
            b4 = self.bottom4(torch.cat([self.down3(t3), p4], 1))
            out = torch.cat([h(f).flatten(2) for h, f in zip(self.heads, (t3, b4))], 2)
            box, cls = out.split([4, out.shape[1] - 4], 1)
            return torch.cat([box, cls.sigmoid()], 1)

    torch.manual_seed(0)
    return _export_image_model(Detector(), path, input_name="images", output_name="detections",
                               opset=opset, exporter=exporter)


def unet(path: Path, *, opset: int = 17, exporter: str = "legacy") -> Path:
    """Small UNet: a strided stem, two encoder levels (conv+BN+ReLU, max pool), a decoder of
    transposed convolutions (3x3 stride 2 with output_padding=1, and 2x2 stride 2), each followed
    by a skip concat and a conv, and the mask resized bilinearly to the input's size
    (`F.interpolate(size=x.shape[-2:])`): N x 2 x 64 x 64."""
    torch = _torch()
    nn = torch.nn
    F = nn.functional

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = _conv_bn(3, 16, stride=2)                           # 32 x 32
            self.enc1 = _conv_bn(16, 16)
            self.enc2 = _conv_bn(16, 32)                                    # 16 x 16
            self.mid = _conv_bn(32, 32)                                     # 8 x 8
            self.up2 = nn.ConvTranspose2d(32, 32, 3, stride=2, padding=1, output_padding=1)
            self.dec2 = _conv_bn(64, 32)
            self.up1 = nn.ConvTranspose2d(32, 16, 2, stride=2)
            self.dec1 = _conv_bn(32, 16)
            self.out = nn.Conv2d(16, 2, 1)

        def forward(self, x):
            e1 = self.enc1(self.stem(x))
            e2 = self.enc2(F.max_pool2d(e1, 2))
            m = self.mid(F.max_pool2d(e2, 2))
            d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
            d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
            return F.interpolate(self.out(d1), size=x.shape[-2:], mode="bilinear",
                                 align_corners=False)

    torch.manual_seed(0)
    return _export_image_model(UNet(), path, input_name="input", output_name="mask", opset=opset,
                               exporter=exporter)


# ---------------------------------------------------------------------------------------------
# the zoo


def _variant(fn, **fixed):
    def build(path: Path, **kw) -> Path:
        return fn(path, **{**fixed, **kw})

    build.__name__ = fn.__name__
    build.__doc__ = fn.__doc__
    return build


_IMAGE_SHAPE = {"input": (BATCH, *IMAGE)}
_DETECTOR_SHAPE = {"images": (BATCH, *DETECTOR_IMAGE)}
_TOKENS = {"input_ids": (BATCH, SEQ), "attention_mask": (BATCH, SEQ)}


def _meta(family, input_shapes, exporter, opset, *, dynamic=("batch",), external_data=False,
          **extra):
    return {"family": family, "input_shapes": dict(input_shapes), "exporter": exporter,
            "opset": opset, "dynamic": tuple(dynamic), "external_data": external_data, **extra}


ZOO: dict[str, tuple] = {
    "resnet": (resnet, _meta("residual", _IMAGE_SHAPE, "legacy", 17)),
    "mobilenet_v2": (mobilenet_v2, _meta("depthwise-separable", _IMAGE_SHAPE, "legacy", 17)),
    "se_net": (se_net, _meta("squeeze-excitation", _IMAGE_SHAPE, "legacy", 17)),
    "shufflenet": (shufflenet, _meta("channel-shuffle", _IMAGE_SHAPE, "legacy", 17)),
    "densenet": (densenet, _meta("dense-concat", _IMAGE_SHAPE, "legacy", 17)),
    "bert_encoder": (bert_encoder, _meta("transformer-encoder", _TOKENS, "legacy", 17,
                                         dynamic=("batch", "sequence"))),
    "gpt_decoder": (gpt_decoder, _meta("transformer-decoder", {"input_ids": (BATCH, SEQ)},
                                       "legacy", 17, dynamic=("batch", "sequence"),
                                       external_data=True)),
    # the same families through the torch.export-based exporter (torch's default since 2.9)
    "resnet_dynamo": (_variant(resnet, exporter="dynamo", opset=18),
                      _meta("residual", _IMAGE_SHAPE, "dynamo", 18)),
    "shufflenet_dynamo": (_variant(shufflenet, exporter="dynamo", opset=18),
                          _meta("channel-shuffle", _IMAGE_SHAPE, "dynamo", 18)),
    "bert_encoder_dynamo": (_variant(bert_encoder, exporter="dynamo", opset=18),
                            _meta("transformer-encoder", _TOKENS, "dynamo", 18,
                                  dynamic=("batch", "sequence"))),
    "gpt_decoder_dynamo": (_variant(gpt_decoder, exporter="dynamo", opset=18),
                           _meta("transformer-decoder", {"input_ids": (BATCH, SEQ)}, "dynamo",
                                 18, dynamic=("batch", "sequence"), external_data=True)),
    # old and new opsets
    "bert_encoder_opset11": (_variant(bert_encoder, opset=11),
                             _meta("transformer-encoder", _TOKENS, "legacy", 11,
                                   dynamic=("batch", "sequence"))),
    "mobilenet_v2_opset11": (_variant(mobilenet_v2, opset=11),
                             _meta("depthwise-separable", _IMAGE_SHAPE, "legacy", 11)),
    # recurrent layers (unrolled) and Resize with sizes, through both exporters
    "recurrent_tagger": (recurrent_tagger, _meta("recurrent", {"input_ids": (BATCH, SEQ)},
                                                 "legacy", 17, dynamic=("batch", "sequence"))),
    "recurrent_tagger_dynamo": (_variant(recurrent_tagger, exporter="dynamo", opset=18),
                                _meta("recurrent", {"input_ids": (BATCH, SEQ)}, "dynamo", 18)),
    "upsampling_decoder": (upsampling_decoder, _meta("resize-to-size", _IMAGE_SHAPE, "legacy",
                                                     11)),
    "upsampling_decoder_dynamo": (_variant(upsampling_decoder, exporter="dynamo", opset=18),
                                  _meta("resize-to-size", _IMAGE_SHAPE, "dynamo", 18)),
    # fp16 hazards: float32-min masks, relative and windowed attention, TopK/Einsum routing
    "t5_encoder": (t5_encoder, _meta("relative-attention-encoder", _TOKENS, "legacy", 17,
                                     dynamic=("batch", "sequence"))),
    "distilbert_encoder": (distilbert_encoder, _meta("masked-fill-encoder", _TOKENS, "legacy",
                                                     17, dynamic=("batch", "sequence"))),
    "windowed_vit": (windowed_vit, _meta("windowed-attention", _IMAGE_SHAPE, "legacy", 17)),
    "moe_router": (moe_router, _meta("mixture-of-experts", {"x": (BATCH, SEQ, 32)}, "legacy",
                                     17, dynamic=("batch", "sequence"))),
    "helper_opset21": (helper_opset21, _meta("transformer-block", {"x": (BATCH, SEQ, 32)},
                                             "onnx.helper", 21,
                                             dynamic=("batch", "sequence"))),
    # what the CPU's packed layout (`--layout NCHW`) keeps NCHW: channel splits by sizes,
    # transposed convs, resizes
    "yolo_detector": (yolo_detector, _meta("detector-split-concat", _DETECTOR_SHAPE, "legacy",
                                           17)),
    "unet": (unet, _meta("unet-transposed-conv", {"input": (BATCH, *DETECTOR_IMAGE)}, "legacy",
                         17)),
}


def build_all(directory: Path, names=None) -> dict[str, Path]:
    """Write every (or the named) zoo model into `directory`: {name: path}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return {name: ZOO[name][0](directory / f"{name}.onnx") for name in (names or ZOO)}
