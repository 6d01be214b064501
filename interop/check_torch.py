"""Loads `cnn` model files into PyTorch itself: builds the `nn.Sequential` the `architecture`
metadata describes, calls `load_state_dict(..., strict=True)` on the safetensors file with no
conversion, and compares the logits of the model in eval mode with `cnn predict --json` on the
same picture. Needs torch (the benchmark venv, see bench/README.md); CI runs the NumPy check
`check_safetensors.py` instead, which needs no torch.

Usage: python interop/check_torch.py PATH/TO/cnn MODEL.safetensors...
"""

import json
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file


def build(architecture, channels):
    """Every module from the settings the file records (files from before they were recorded
    lack the fixed ones: `cnn`'s values are the defaults here)."""
    modules = []
    for layer in architecture:
        kind = layer["type"]
        if kind == "conv2d":
            modules.append(nn.Conv2d(channels, layer["out_channels"], tuple(layer["kernel"]),
                                     tuple(layer["stride"]), tuple(layer["padding"]),
                                     dilation=tuple(layer.get("dilation", [1, 1])),
                                     groups=layer.get("groups", 1),
                                     padding_mode=layer.get("padding_mode", "zeros"),
                                     bias=layer["bias"]))
            channels = layer["out_channels"]
        elif kind == "batchnorm2d":
            modules.append(nn.BatchNorm2d(channels, eps=layer.get("eps", 1e-5),
                                          momentum=layer.get("momentum", 0.1)))
        elif kind == "relu":
            modules.append(nn.ReLU())
        elif kind in ("max_pool2d", "avg_pool2d"):
            args = (tuple(layer["kernel"]), tuple(layer["stride"]), tuple(layer["padding"]))
            modules.append(nn.MaxPool2d(*args, ceil_mode=layer["ceil_mode"],
                                        dilation=tuple(layer.get("dilation", [1, 1])))
                           if kind == "max_pool2d"
                           else nn.AvgPool2d(*args, ceil_mode=layer["ceil_mode"],
                                             count_include_pad=layer.get("count_include_pad", False)))
        elif kind == "global_avg_pool":
            modules.append(nn.AdaptiveAvgPool2d(1))
        elif kind == "dropout":
            modules.append(nn.Dropout(layer["rate"]))
        elif kind == "flatten":
            modules.append(nn.Flatten())
        elif kind == "dense":
            modules.append(nn.LazyLinear(layer["out_features"], bias=layer["bias"]))
        else:
            raise SystemExit(f"unknown layer type {kind}")
    return nn.Sequential(*modules)


def main():
    cnn, paths = sys.argv[1], sys.argv[2:]
    for path in paths:
        with safe_open(path, "pt") as f:
            metadata = f.metadata()
        architecture = json.loads(metadata["architecture"])
        c, h, w = json.loads(metadata["input_shape"])
        preprocessing = json.loads(metadata["preprocessing"])
        net = build(architecture, c)
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
        print(f"{path}: load_state_dict(strict=True) ok; logits torch {logits} cnn "
              f"{theirs['logits']}; max difference {difference:.1e}")
        assert difference <= 1e-4 * max(1.0, np.abs(logits).max())


if __name__ == "__main__":
    main()
