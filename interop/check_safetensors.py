"""Reads a `cnn` model file with Python's `safetensors` package and checks that it is what
PyTorch expects: state-dict names by module path (`0.weight` for a plain stack, as
`nn.Sequential` names them; `layer1.0.conv1.weight` in a graph), PyTorch layouts and dtypes, and
metadata that describes the architecture (the layers of a stack, the nodes of a graph). Then
runs the network in NumPy with PyTorch's semantics (NCHW, cross-correlation with weights
[out, in / groups, kh, kw], flatten in C*H*W order, y = x W^T + b, batch normalisation with its
running statistics, dropout the identity), node by node through the graph, and compares its
probabilities and logits with `cnn predict` on the same image.

Usage: python check_safetensors.py PATH/TO/cnn MODEL.safetensors...
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

EPSILON = 1e-5


def nodes_of(architecture):
    """The graph's nodes; a stack (a list of layers) is node i named "i" reading node i - 1."""
    if isinstance(architecture, dict):
        return architecture["nodes"]
    return [{"name": str(i), "op": op, "inputs": ["input" if i == 0 else str(i - 1)]}
            for i, op in enumerate(architecture)]


def conv2d(x, weight, bias, op):
    c, h, w = x.shape
    out_c, in_c, kh, kw = weight.shape
    (sh, sw), (ph, pw) = op["stride"], op["padding"]
    dh, dw = op.get("dilation", [1, 1])
    groups = op.get("groups", 1)
    assert in_c * groups == c, f"weight expects {in_c} x {groups} channels, input has {c}"
    x = np.pad(x, ((0, 0), (ph, ph), (pw, pw)))
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((out_c, oh, ow), dtype=np.float64)
    per_group = out_c // groups
    for g in range(groups):
        wg = weight[g * per_group:(g + 1) * per_group]
        xg = x[g * in_c:(g + 1) * in_c]
        for i in range(oh):
            for j in range(ow):
                window = xg[:, i * sh:i * sh + dh * (kh - 1) + 1:dh, j * sw:j * sw + dw * (kw - 1) + 1:dw]
                y[g * per_group:(g + 1) * per_group, i, j] = np.tensordot(wg, window, axes=([1, 2, 3], [0, 1, 2]))
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
            # The mean over the pixels the window covers (`count_include_pad=False`).
            y[:, i, j] = region.max(axis=(1, 2)) if kind == "max" else region.mean(axis=(1, 2))
    return y


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def apply(op, inputs, t):
    """One node: `op` (its JSON), `inputs` (arrays), `t(name)` its tensors or None."""
    kind, x = op["type"], inputs[0]
    if kind == "conv2d":
        return conv2d(x, t("weight"), t("bias"), op)
    if kind == "dense":
        return t("weight") @ x + (t("bias") if t("bias") is not None else 0)
    if kind == "batchnorm2d":
        shape = (-1, 1, 1) if x.ndim == 3 else (-1,)
        scale = t("weight") / np.sqrt(t("running_var") + EPSILON)
        return (x - t("running_mean").reshape(shape)) * scale.reshape(shape) + t("bias").reshape(shape)
    if kind == "pad":
        top, left, bottom, right = op["pads"]
        widths = ((0, 0), (top, bottom), (left, right))
        if op["mode"] == "constant":
            return np.pad(x, widths, mode="constant", constant_values=op["value"])
        return np.pad(x, widths, mode={"edge": "edge", "reflect": "reflect"}[op["mode"]])
    if kind == "lrn":
        size, before, after = op["size"], (op["size"] - 1) // 2, op["size"] // 2
        squares = np.stack([(x[max(0, c - before):c + after + 1] ** 2).sum(axis=0)
                            for c in range(x.shape[0])])
        return x / (op["bias"] + op["alpha"] / size * squares) ** op["beta"]
    if kind == "reshape":
        return x.reshape(op["shape"])
    if kind == "constant_op":
        c = t("constant")
        return {"add": lambda: x + c, "sub": lambda: x - c, "mul": lambda: x * c,
                "div": lambda: x / c, "reverse_sub": lambda: c - x,
                "reverse_div": lambda: c / x}[op["op"]]()
    if kind == "prelu":
        slope = t("weight").reshape((-1, 1, 1) if x.ndim == 3 else (-1,))
        return np.where(x > 0, x, slope * x)
    # The average's divisor is the number of pixels a window covers, padding not counted.
    assert kind != "avg_pool2d" or op.get("count_include_pad", False) is False, op
    simple = {
        "relu": lambda: np.maximum(x, 0),
        "leaky_relu": lambda: np.where(x > 0, x, op["slope"] * x),
        "sigmoid": lambda: sigmoid(x),
        "tanh": lambda: np.tanh(x),
        "gelu": lambda: x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
        "silu": lambda: x * sigmoid(x),
        "clip": lambda: np.clip(x, -np.inf if op["min"] is None else op["min"],
                                np.inf if op["max"] is None else op["max"]),
        "hardsigmoid": lambda: np.clip(op["alpha"] * x + op["beta"], 0, 1),
        "hardswish": lambda: x * np.clip(x / 6 + 0.5, 0, 1),
        "identity": lambda: x,
        "dropout": lambda: x,
        "flatten": lambda: x.reshape(-1),
        "global_avg_pool": lambda: x.mean(axis=(1, 2)),
        "global_max_pool": lambda: x.max(axis=(1, 2)),
        "max_pool2d": lambda: pool2d(x, op, "max"),
        "avg_pool2d": lambda: pool2d(x, op, "avg"),
        "add": lambda: sum(inputs),
        "concat": lambda: np.concatenate(inputs, axis=0),
        # Features broadcast over maps as one value per channel.
        "mul": lambda: np.multiply(*[i.reshape(-1, 1, 1) if i.ndim == 1 and x.ndim + inputs[1].ndim > 2
                                     else i for i in inputs]),
    }
    if kind not in simple:
        raise SystemExit(f"unknown layer type {kind}")
    return simple[kind]()


def forward(nodes, tensors, x):
    values = {"input": x}
    for node in nodes:
        name = node["name"]
        values[name] = apply(node["op"], [values[i] for i in node["inputs"]],
                             lambda t: tensors.get(f"{name}.{t}"))
    return values[nodes[-1]["name"]], values


def expected_tensors(nodes, values):
    """Names, shapes and dtypes of the state dict PyTorch modules of the same structure have."""
    expected = {}
    for node in nodes:
        op, name = node["op"], node["name"]
        shape_in = values[node["inputs"][0]].shape
        if op["type"] == "conv2d":
            kh, kw = op["kernel"]
            expected[f"{name}.weight"] = ((op["out_channels"], shape_in[0] // op.get("groups", 1), kh, kw), "float32")
            if op["bias"]:
                expected[f"{name}.bias"] = ((op["out_channels"],), "float32")
        elif op["type"] == "dense":
            expected[f"{name}.weight"] = ((op["out_features"], int(np.prod(shape_in))), "float32")
            if op["bias"]:
                expected[f"{name}.bias"] = ((op["out_features"],), "float32")
        elif op["type"] == "batchnorm2d":
            for t in ("weight", "bias", "running_mean", "running_var"):
                expected[f"{name}.{t}"] = ((shape_in[0],), "float32")
            expected[f"{name}.num_batches_tracked"] = ((), "int64")
        elif op["type"] == "constant_op":
            c, h, w = op["operand"]
            expected[f"{name}.constant"] = (((c,) if len(shape_in) == 1 else (c, h, w)), "float32")
        elif op["type"] == "prelu":
            expected[f"{name}.weight"] = ((1 if op["shared"] else shape_in[0],), "float32")
    return expected


def check(cnn, model_path):
    tensors = load_file(model_path)
    with safe_open(model_path, framework="numpy") as f:
        metadata = f.metadata()
    nodes = nodes_of(json.loads(metadata["architecture"]))
    channels, height, width = json.loads(metadata["input_shape"])
    classes = json.loads(metadata["classes"])
    preprocessing = json.loads(metadata["preprocessing"])
    kind = "stack" if isinstance(json.loads(metadata["architecture"]), list) else "graph"
    print(f"{model_path}: a {kind} of {len(nodes)} nodes; input {channels}x{height}x{width}; classes {classes}")

    # An image with only black and white pixels, at the model's size: `cnn predict` neither
    # resizes nor re-levels it, so both sides see the same input.
    assert channels == 1
    image = np.zeros((height, width), dtype=np.uint8)
    for i in range(4, height - 4):
        image[i, i] = image[i, width - 1 - i] = 255
        image[i, min(i + 1, width - 1)] = image[i, max(width - 2 - i, 0)] = 255
    x = (image.astype(np.float64) / 255 - preprocessing["mean"][0]) / preprocessing["std"][0]
    wide = {k: v.astype(np.float64) for k, v in tensors.items()}
    logits, values = forward(nodes, wide, x[None])

    expected = expected_tensors(nodes, values)
    actual = {name: (tuple(t.shape), str(t.dtype)) for name, t in tensors.items()}
    assert actual == expected, f"tensors {actual} != expected {expected}"
    print(f"tensors: {len(actual)}, named and shaped as PyTorch's state dict")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.pgm")
        with open(path, "wb") as f:
            f.write(f"P5 {width} {height} 255\n".encode() + image.tobytes())
        result = subprocess.run([cnn, "predict", "--json", "--model", model_path, path],
                                check=True, capture_output=True, text=True)
    theirs = json.loads(result.stdout)
    ours = np.exp(logits - logits.max())
    ours /= ours.sum()
    assert theirs["classes"] == classes, (theirs["classes"], classes)
    for name, mine, yours in zip(classes, ours, theirs["probabilities"]):
        assert abs(yours - mine) < 1e-4, (name, theirs, ours)
    for mine, yours in zip(logits, theirs["logits"]):
        assert abs(mine - yours) <= 1e-4 * max(1.0, abs(mine)), (logits, theirs["logits"])
    print(f"numpy forward pass agrees with cnn predict: logits {logits.round(4)} vs {theirs['logits']}")


def main():
    cnn, paths = sys.argv[1], sys.argv[2:]
    for path in paths:
        check(cnn, path)
    print("OK: every model file reads as a PyTorch state dict and computes the same logits")


if __name__ == "__main__":
    main()
