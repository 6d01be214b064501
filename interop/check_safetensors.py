"""Reads a `cnn` model file with Python's `safetensors` package and checks that it is what
PyTorch expects: `nn.Sequential` state-dict names, PyTorch layouts, and metadata that describes
the architecture. Then runs the network in NumPy with PyTorch's semantics (NCHW,
cross-correlation with weights [out, in, kh, kw], flatten in C*H*W order, y = x W^T + b) and
compares its probabilities with `cnn predict` on the same image.

Usage: python check_safetensors.py MODEL.safetensors PATH/TO/cnn
"""

import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file


def conv2d(x, weight, bias, stride, padding):
    c, h, w = x.shape
    out_c, in_c, kh, kw = weight.shape
    assert in_c == c, f"weight expects {in_c} channels, input has {c}"
    x = np.pad(x, ((0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    oh = (h + 2 * padding[0] - kh) // stride[0] + 1
    ow = (w + 2 * padding[1] - kw) // stride[1] + 1
    y = np.zeros((out_c, oh, ow), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            window = x[:, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw]
            y[:, i, j] = np.tensordot(weight, window, axes=([1, 2, 3], [0, 1, 2]))
    if bias is not None:
        y += bias[:, None, None]
    return y


def pool2d(x, window, kind):
    c, h, w = x.shape
    kernel, stride, padding, ceil = window["kernel"], window["stride"], window["padding"], window["ceil_mode"]

    def out_len(n, k, s, p):
        span = n + 2 * p - k
        out = (math.ceil(span / s) if ceil else span // s) + 1
        if ceil and (out - 1) * s >= n + p:
            out -= 1
        return out

    oh, ow = out_len(h, kernel[0], stride[0], padding[0]), out_len(w, kernel[1], stride[1], padding[1])
    y = np.zeros((c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            y0, x0 = i * stride[0] - padding[0], j * stride[1] - padding[1]
            region = x[:, max(y0, 0):min(y0 + kernel[0], h), max(x0, 0):min(x0 + kernel[1], w)]
            y[:, i, j] = region.max(axis=(1, 2)) if kind == "max" else region.mean(axis=(1, 2))
    return y


def forward(architecture, tensors, x):
    for index, layer in enumerate(architecture):
        kind = layer["type"]
        weight, bias = tensors.get(f"{index}.weight"), tensors.get(f"{index}.bias")
        if kind == "conv2d":
            x = conv2d(x, weight, bias, layer["stride"], layer["padding"])
        elif kind == "relu":
            x = np.maximum(x, 0)
        elif kind == "max_pool2d":
            x = pool2d(x, layer, "max")
        elif kind == "avg_pool2d":
            # The divisor is the number of pixels a window covers, padding not counted.
            assert layer.get("count_include_pad", False) is False, layer
            x = pool2d(x, layer, "avg")
        elif kind == "flatten":
            x = x.reshape(-1)
        elif kind == "dense":
            x = weight @ x + (bias if bias is not None else 0)
        else:
            raise SystemExit(f"unknown layer type {kind}")
    return x


def main():
    model_path, cnn = sys.argv[1], sys.argv[2]
    tensors = load_file(model_path)
    with safe_open(model_path, framework="numpy") as f:
        metadata = f.metadata()
    architecture = json.loads(metadata["architecture"])
    channels, height, width = json.loads(metadata["input_shape"])
    classes = json.loads(metadata["classes"])
    preprocessing = json.loads(metadata["preprocessing"])
    print(f"metadata: {metadata['notation']}; input {channels}x{height}x{width}; classes {classes}")

    # Names and shapes exactly as torch.nn.Sequential's state_dict would have them.
    expected = {}
    shape = (channels, height, width)
    for index, layer in enumerate(architecture):
        if layer["type"] == "conv2d":
            kh, kw = layer["kernel"]
            expected[f"{index}.weight"] = (layer["out_channels"], shape[0], kh, kw)
            if layer["bias"]:
                expected[f"{index}.bias"] = (layer["out_channels"],)
        if layer["type"] == "dense":
            expected[f"{index}.weight"] = (layer["out_features"], int(np.prod(shape)))
            if layer["bias"]:
                expected[f"{index}.bias"] = (layer["out_features"],)
        shape = forward([layer], {k.replace(f"{index}.", "0."): v for k, v in tensors.items() if k.startswith(f"{index}.")}, np.zeros(shape)).shape
    actual = {name: tuple(t.shape) for name, t in tensors.items()}
    assert actual == expected, f"tensors {actual} != expected {expected}"
    assert all(t.dtype == np.float32 for t in tensors.values())
    print(f"tensors: {sorted(actual.items())}")

    # An image with only black and white pixels, at the model's size: `cnn predict` neither
    # resizes nor re-levels it, so both sides see the same input.
    assert channels == 1
    image = np.zeros((height, width), dtype=np.uint8)
    for i in range(4, height - 4):
        image[i, i] = image[i, width - 1 - i] = 255
        image[i, min(i + 1, width - 1)] = image[i, max(width - 2 - i, 0)] = 255
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.pgm")
        with open(path, "wb") as f:
            f.write(f"P5 {width} {height} 255\n".encode() + image.tobytes())
        result = subprocess.run([cnn, "predict", "--json", "--model", model_path, path],
                                check=True, capture_output=True, text=True)
    theirs = json.loads(result.stdout)
    x = (image.astype(np.float64) / 255 - preprocessing["mean"][0]) / preprocessing["std"][0]
    logits = forward(architecture, {k: v.astype(np.float64) for k, v in tensors.items()}, x[None])
    ours = np.exp(logits - logits.max())
    ours /= ours.sum()
    assert theirs["classes"] == classes, (theirs["classes"], classes)
    for name, mine, yours in zip(classes, ours, theirs["probabilities"]):
        assert abs(yours - mine) < 1e-4, (name, theirs, ours)
    for mine, yours in zip(logits, theirs["logits"]):
        assert abs(mine - yours) <= 1e-4 * max(1.0, abs(mine)), (logits, theirs["logits"])
    print(f"numpy forward pass agrees with cnn predict: logits {logits.round(4)} vs {theirs['logits']}")
    print("OK: the model file reads as a PyTorch nn.Sequential state dict")


if __name__ == "__main__":
    main()
