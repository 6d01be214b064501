"""Loads `cnn` model files into PyTorch itself: builds the module the `architecture` metadata
describes (every node a module at its path, `layer1.0.conv1` inside `layer1` inside `0`, as
torchvision's ResNet nests them; a plain stack is an `nn.Sequential`), calls
`load_state_dict(..., strict=True)` on the safetensors file with no conversion, and compares the
logits of the model in eval mode with `cnn predict --json` on the same picture. Needs torch (the
benchmark venv, see bench/README.md); CI runs the NumPy check `check_safetensors.py` instead,
which needs no torch.

Usage: python interop/check_torch.py PATH/TO/cnn MODEL.safetensors...
"""

import json
import math
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file


def nodes_of(architecture):
    """The graph's nodes; a stack (a list of layers) is node i named "i" reading node i - 1."""
    if isinstance(architecture, dict):
        return architecture["nodes"]
    return [{"name": str(i), "op": op, "inputs": ["input" if i == 0 else str(i - 1)]}
            for i, op in enumerate(architecture)]


class Add(nn.Module):
    def forward(self, *xs):
        return sum(xs)


class Concat(nn.Module):
    def forward(self, *xs):
        return torch.cat(xs, dim=1)


# The ops whose output is `[N, F]`.
FLATTENING = ("flatten", "dense", "global_avg_pool", "global_max_pool")
# Ops whose output is features only when every input is.
PRODUCTS = ("mul",)
# Ops whose output is maps even from features.
UNFLATTENING = ("reshape",)


class ConstantOp(nn.Module):
    """`x op c` with the constant a buffer named `constant`, as `cnn` saves it."""

    def __init__(self, op, shape):
        super().__init__()
        self.op = op
        self.register_buffer("constant", torch.zeros(shape))

    def forward(self, x):
        c = self.constant
        return {"add": lambda: x + c, "sub": lambda: x - c, "mul": lambda: x * c,
                "div": lambda: x / c, "reverse_sub": lambda: c - x,
                "reverse_div": lambda: c / x}[self.op]()


class Mul(nn.Module):
    """The product, features broadcast over maps as one value per channel."""

    def forward(self, a, b):
        if a.dim() != b.dim():
            a, b = (x.reshape(x.shape[0], -1, 1, 1) if x.dim() == 2 else x for x in (a, b))
        return a * b


class Lambda(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


def module(op, channels, flat=False):
    """The PyTorch module of one node (reading features when `flat`), and its output channels."""
    kind = op["type"]
    # Built from the settings the file records (files from before they were recorded lack
    # the fixed ones: `cnn`'s values are the defaults here).
    if kind == "conv2d":
        return nn.Conv2d(channels, op["out_channels"], tuple(op["kernel"]), tuple(op["stride"]),
                         tuple(op["padding"]), tuple(op.get("dilation", [1, 1])),
                         op.get("groups", 1), bias=op["bias"],
                         padding_mode=op.get("padding_mode", "zeros")), op["out_channels"]
    if kind == "batchnorm2d":
        return nn.BatchNorm2d(channels, eps=op.get("eps", 1e-5),
                              momentum=op.get("momentum", 0.1)), channels
    if kind in ("max_pool2d", "avg_pool2d"):
        args = (tuple(op["kernel"]), tuple(op["stride"]), tuple(op["padding"]))
        if kind == "max_pool2d":
            return nn.MaxPool2d(*args, ceil_mode=op["ceil_mode"],
                                dilation=tuple(op.get("dilation", [1, 1]))), channels
        return nn.AvgPool2d(*args, ceil_mode=op["ceil_mode"],
                            count_include_pad=op.get("count_include_pad", False)), channels
    if kind == "dense":
        return nn.LazyLinear(op["out_features"], bias=op["bias"]), op["out_features"]
    simple = {
        "relu": nn.ReLU(), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), "gelu": nn.GELU(approximate=op.get("approximate", "none")),
        "silu": nn.SiLU(), "identity": nn.Identity(), "flatten": nn.Flatten(),
        "global_avg_pool": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        "global_max_pool": nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten()),
        "add": Add(), "concat": Concat(), "mul": Mul(),
    }
    if kind == "leaky_relu":
        return nn.LeakyReLU(op["slope"]), channels
    if kind == "clip":
        low = -math.inf if op["min"] is None else op["min"]
        high = math.inf if op["max"] is None else op["max"]
        return nn.Hardtanh(low, high), channels
    if kind == "hardsigmoid":
        return Lambda(lambda x: torch.clamp(op["alpha"] * x + op["beta"], 0, 1)), channels
    if kind == "pad":
        top, left, bottom, right = op["pads"]
        mode = {"constant": "constant", "edge": "replicate", "reflect": "reflect"}[op["mode"]]
        value = op.get("value") if mode == "constant" else None
        return Lambda(lambda x: F.pad(x, (left, right, top, bottom), mode=mode, value=value)), channels
    if kind == "lrn":
        # PyTorch's window is ONNX's (and cnn's) for odd sizes.
        assert op["size"] % 2 == 1, op
        return nn.LocalResponseNorm(op["size"], op["alpha"], op["beta"], op["bias"]), channels
    if kind == "reshape":
        return Lambda(lambda x: x.reshape(-1, *op["shape"])), op["shape"][0]
    if kind == "constant_op":
        c, h, w = op["operand"]
        return ConstantOp(op["op"], (c,) if flat else (c, h, w)), channels
    if kind == "prelu":
        return nn.PReLU(1 if op["shared"] else channels), channels
    if kind == "hardswish":
        return nn.Hardswish(), channels
    if kind == "dropout":
        return nn.Dropout(op["rate"]), channels
    if kind not in simple:
        raise SystemExit(f"unknown layer type {kind}")
    return simple[kind], channels


class Graph(nn.Module):
    """The nodes as modules at their paths (intermediate modules created as needed), run in
    order."""

    def __init__(self, nodes, channels):
        super().__init__()
        self.order = []
        width = {"input": channels}
        flat = {"input": False}
        for node in nodes:
            inputs = node["inputs"]
            if node["op"]["type"] == "concat":
                c = sum(width[i] for i in inputs)
            else:
                c = width[inputs[0]]
            m, width[node["name"]] = module(node["op"], c, flat[inputs[0]])
            kind = node["op"]["type"]
            if kind in PRODUCTS:
                flat[node["name"]] = all(flat[i] for i in inputs)
            else:
                flat[node["name"]] = kind in FLATTENING or (kind not in UNFLATTENING
                                                            and any(flat[i] for i in inputs))
            *parents, leaf = node["name"].split(".")
            owner = self
            for part in parents:
                if not hasattr(owner, part):
                    owner.add_module(part, nn.Module())
                owner = getattr(owner, part)
            placeholder = getattr(owner, leaf, None)
            if placeholder is not None:
                # Made for an earlier node inside this one (an `add`'s branches): keep its children.
                for child_name, child in placeholder.named_children():
                    m.add_module(child_name, child)
            owner.add_module(leaf, m)
            self.order.append((node["name"], m, inputs))

    def forward(self, x):
        values = {"input": x}
        for name, m, inputs in self.order:
            values[name] = m(*[values[i] for i in inputs])
        return values[self.order[-1][0]]


def main():
    cnn, paths = sys.argv[1], sys.argv[2:]
    for path in paths:
        with safe_open(path, "pt") as f:
            metadata = f.metadata()
        nodes = nodes_of(json.loads(metadata["architecture"]))
        c, h, w = json.loads(metadata["input_shape"])
        preprocessing = json.loads(metadata["preprocessing"])
        net = Graph(nodes, c)
        net(torch.zeros(1, c, h, w))  # sizes the lazy dense layers
        net.load_state_dict(load_file(path), strict=True)
        net.eval()
        # A black-and-white X at the model's size: `cnn predict` neither resizes nor re-levels it.
        assert c == 1, "this check draws grey pictures"
        picture = np.zeros((h, w), np.uint8)
        for i in range(2, h - 2):
            picture[i, i] = picture[i, w - 1 - i] = 255
        with tempfile.NamedTemporaryFile(suffix=".pgm") as f:
            f.write(f"P5 {w} {h} 255\n".encode() + picture.tobytes())
            f.flush()
            theirs = json.loads(subprocess.check_output([cnn, "predict", "--json", "--model", path, f.name]))
        x = (picture / 255.0 - preprocessing["mean"][0]) / preprocessing["std"][0]
        with torch.no_grad():
            logits = net(torch.tensor(x, dtype=torch.float32)[None, None])[0].numpy()
        difference = np.abs(logits - np.array(theirs["logits"])).max()
        print(f"{path}: {len(nodes)} nodes, load_state_dict(strict=True) ok; logits torch {logits} "
              f"cnn {theirs['logits']}; max difference {difference:.1e}")
        assert difference <= 1e-5 * max(1.0, np.abs(logits).max())


if __name__ == "__main__":
    main()
