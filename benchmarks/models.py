"""The models the suites measure, with random (seeded) weights: PyTorch factories for `compare
--torch benchmarks.models:NAME` and small ONNX graphs for the kernel- and tuner-level suites.

A PyTorch factory returns a module (its one input shaped by `--input-shape`) or a pair (module,
{input name: example tensor}) when the inputs need to be realistic (token ids in range, a mask
that masks). ResNet-50 needs torchvision and BERT-base transformers; neither is imported until
its factory is called, so the CPU suites run without them.
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


def bert_base(seq: int = 128, batch: int = 1):
    """transformers' BertModel with `BertConfig()` (BERT-base: 12 layers, hidden 768), sequence
    128 with the last quarter padded, so the attention mask matters."""
    import torch
    from transformers import BertConfig, BertModel

    class LastHiddenState(torch.nn.Module):  # one output tensor, as compare expects
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    config = BertConfig()
    config._attn_implementation = "eager"  # the attention the ONNX exporters trace faithfully
    ids = torch.randint(0, config.vocab_size, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[:, seq * 3 // 4:] = 0
    return LastHiddenState(BertModel(config)), {"input_ids": ids, "attention_mask": mask}


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
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript exporter warns that it is the legacy one
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, tuple(example.values()), str(path), input_names=list(example),
                          output_names=["output"], opset_version=17, dynamo=False)


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
