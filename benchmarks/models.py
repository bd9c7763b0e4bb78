"""The models the suites measure, with random (seeded) weights: PyTorch factories for `compare
--torch benchmarks.models:NAME` and small ONNX graphs for the kernel- and tuner-level suites.

A PyTorch factory returns a module (its one input shaped by `--input-shape`) or a pair (module,
{input name: example tensor}) when the inputs need to be realistic (token ids in range, a mask
that masks). ResNet-50 needs torchvision and the transformers (BERT-base, GPT-2, ViT-B/16, CLIP's
text encoder, a Llama-style decoder) need transformers; neither is imported until its factory is
called, so the CPU suites run without them. Every factory builds from a config with random
weights: nothing is downloaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np


def resnet50(batch: int = 1):
    """torchvision's ResNet-50, 224x224."""
    import torch
    import torchvision

    return torchvision.models.resnet50(), {"input": torch.randn(batch, 3, 224, 224)}


def transformer(model, inputs: dict, output: str, onnxruntime_fusion: dict):
    """A transformers model as `compare` takes it: (module, inputs), one output tensor, positional
    inputs in the order of `inputs`. PyTorch's rows run it with SDPA attention (transformers'
    default); the ONNX file is exported with eager attention (`export_torch` switches it): the
    op-by-op graph that ONNX Runtime's fusions and tvmopt's attention kernel are written for
    (an SDPA export adds NaN guards between them). `onnxruntime_fusion` holds the arguments of
    onnxruntime.transformers' optimize_model."""
    import torch

    class OneOutput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.attention = model.config._attn_implementation
            self.onnxruntime_fusion = onnxruntime_fusion

        def forward(self, *args):
            return getattr(self.model(**dict(zip(inputs, args))), output)

        def set_attention(self, name: str) -> None:
            self.model.set_attn_implementation(name)
            self.attention = name

    model.config.use_cache = False  # no key/value cache among the outputs: one prefill
    return OneOutput(), inputs


def bert_base(seq: int = 128, batch: int = 1):
    """transformers' BertModel with `BertConfig()` (BERT-base: 12 layers, hidden 768), sequence
    128 with the last quarter padded, so the attention mask matters."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(attn_implementation="sdpa")
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[:, seq * 3 // 4:] = 0
    return transformer(BertModel(config), {
        "input_ids": torch.randint(0, config.vocab_size, (batch, seq)), "attention_mask": mask},
        "last_hidden_state", {"model_type": "bert", "num_heads": 12, "hidden_size": 768})


def decoder_inputs(config, batch: int, seq: int) -> dict:
    """Token ids and an all-ones attention mask, as decoders are exported and called (without a
    mask, transformers derives one from the position ids by `torch.diff`, which the TorchScript
    exporter cannot export)."""
    import torch

    return {"input_ids": torch.randint(0, config.vocab_size, (batch, seq)),
            "attention_mask": torch.ones(batch, seq, dtype=torch.int64)}


def gpt2_small(seq: int = 128, batch: int = 1):
    """transformers' GPT2LMHeadModel with `GPT2Config()` (GPT-2 small: 12 layers, hidden 768),
    causal, sequence 128: the logits."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(attn_implementation="sdpa")
    return transformer(GPT2LMHeadModel(config), decoder_inputs(config, batch, seq), "logits",
                       {"model_type": "gpt2", "num_heads": 12, "hidden_size": 768})


def vit_b16(batch: int = 1):
    """transformers' ViTForImageClassification with `ViTConfig()` (ViT-B/16, 224x224) and a
    1000-class head, initialised at random like the rest (torchvision's ViT zero-initialises its
    head: every output would be 0): the logits."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(num_labels=1000, attn_implementation="sdpa")
    return transformer(ViTForImageClassification(config),
                       {"pixel_values": torch.randn(batch, 3, 224, 224)},
                       "logits", {"model_type": "vit", "num_heads": 12, "hidden_size": 768})


def clip_text_b32(batch: int = 1):
    """transformers' CLIPTextModel with `CLIPTextConfig()` (CLIP ViT-B/32's text encoder: 12
    layers, hidden 512, causal), 77 tokens: the last hidden state."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(attn_implementation="sdpa")
    ids = torch.randint(0, config.vocab_size, (batch, config.max_position_embeddings))
    return transformer(CLIPTextModel(config), {"input_ids": ids}, "last_hidden_state",
                       {"model_type": "clip", "num_heads": 8, "hidden_size": 512})


def llama_decoder(seq: int = 512, batch: int = 1):
    """transformers' LlamaModel, Llama-style at 0.6B parameters: 12 layers, hidden 2048, 16 query
    and 4 key/value heads (grouped), RoPE, SwiGLU MLP of 5632, causal; a 512-token prefill: the
    last hidden state. Its fp32 weights (2.4 GB) pass ONNX's 2 GB limit, so the export keeps
    them in files beside the model. ONNX Runtime's fusions are called as its own Llama export
    script calls them (model type gpt2, opt_level 0)."""
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=12,
                         num_attention_heads=16, num_key_value_heads=4, vocab_size=32000,
                         attn_implementation="sdpa")
    return transformer(LlamaModel(config), decoder_inputs(config, batch, seq), "last_hidden_state",
                       {"model_type": "gpt2", "num_heads": 16, "hidden_size": 2048,
                        "opt_level": 0})


def small_resnet():
    """ResNet-style, 4 stages of one basic block (16-128 channels): for 1x3x64x64 inputs, small
    enough to tune on a 2-core CPU in minutes, and needs no torchvision."""
    from torch import nn

    def block(cin: int, cout: int, stride: int) -> nn.Module:
        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(
                    nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                    nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
                self.skip = (nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))
                self.relu = nn.ReLU()

            def forward(self, x):
                return self.relu(self.body(x) + self.skip(x))

        return Block()

    stages = [block(16, 16, 1), block(16, 32, 2), block(32, 64, 2), block(64, 128, 2)]
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


def load_factory(spec: str):
    """`package.module:fn` or `path/to/file.py:fn` -> fn."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        sys.exit(f"--torch {spec!r}: expected MODULE:FACTORY or FILE.py:FACTORY")
    if where.endswith(".py"):
        module_spec = importlib.util.spec_from_file_location(Path(where).stem, where)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


def torch_model(spec: str, input_shape: str | None, batch: int | None = None):
    """(module in eval mode, {input name: example tensor}) from a factory spec, seeded so that a
    later export of the same factory has the same weights; `batch` goes to a factory taking it."""
    import torch

    torch.manual_seed(0)
    made = load_factory(spec)(**({"batch": batch} if batch else {}))
    if isinstance(made, tuple):
        net, example = made
    else:
        if not input_shape:
            sys.exit(f"--torch {spec}: this factory returns a bare module; give --input-shape")
        net, example = made, {"input": torch.randn(*(int(d) for d in input_shape.split("x")))}
    return net.eval(), example


def export_torch(net, example: dict, path: Path) -> None:
    """The TorchScript exporter (opset 17), as most users still export; a `transformer` module
    with eager attention, then back to the attention it ran with."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    ran_with = getattr(net, "attention", None)
    if ran_with is not None:
        net.set_attention("eager")
    try:
        with warnings.catch_warnings():  # the TorchScript exporter warns that it is the legacy one
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(net, tuple(example.values()), str(path), input_names=list(example),
                              output_names=["output"], opset_version=17, dynamo=False)
    finally:
        if ran_with is not None:
            net.set_attention(ran_with)


def conv_chain(path: Path, channels: int, size: int, depth: int = 1, *, bias: bool = False) -> Path:
    """`depth` 3x3 convs (C -> C, padding 1, [bias +] ReLU) on 1xCxHxH, fp32, He-scaled weights:
    one conv is one tuning task; a chain of four puts a layer between a network's neighbours."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(depth):
        scale = np.sqrt(2 / (9 * channels))
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((channels, channels, 3, 3)) * scale).astype(np.float32), f"w{i}"))
        inputs = [prev, f"w{i}"]
        if bias:
            inits.append(numpy_helper.from_array(
                rng.standard_normal(channels).astype(np.float32) * 0.1, f"b{i}"))
            inputs.append(f"b{i}")
        nodes += [helper.make_node("Conv", inputs, [f"c{i}"], pads=[1] * 4),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev = f"r{i}"
    shape = [1, channels, size, size]
    graph = helper.make_graph(nodes, "conv_chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, shape)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path
