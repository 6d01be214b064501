"""Writes the PyTorch-exported ONNX fixtures that `cnn`'s ONNX import is tested on.

Builds two small image classifiers with fixed seeds and random weights (eval mode, batch-norm
running statistics and affine parameters set to random non-trivial values), exports each with
PyTorch's classic TorchScript exporter (opset 17, input `input`, output `logits`, batch axis 0
dynamic on both), and writes into crates/cnn-cli/tests/fixtures/onnx/:

    resnet_style.onnx     1x28x28 -> 10: stem conv+BN+ReLU, two BasicBlocks (the second with
                          stride 2 and a 1x1 conv+BN downsample), global average pool, Linear
    inception_style.onnx  3x32x32 -> 10: stem conv+ReLU+MaxPool, one four-branch Inception
                          block concatenated on channels, global average pool, Linear
    mobile_style.onnx     3x32x32 -> 10: MobileNetV3's pieces: TensorFlow-style "same" padding
                          of a stride-2 conv (ZeroPad2d, one more pixel after than before),
                          Hardswish, a depthwise conv with ReLU6, a squeeze-and-excitation gate
                          (Hardsigmoid, Mul), PReLU, an average pool counting its padding,
                          input normalisation inside the network (Sub, Div by constants)
    sequence_style.onnx   4x50 -> 10: 1-D: Conv1d+BatchNorm1d+ReLU, MaxPool1d, a dilated
                          Conv1d, LeakyReLU, global average pool, Linear
    aux_heads_style.onnx  3x32x32 -> four outputs, as GoogLeNet gives its auxiliary classifier's:
                          `features` (the pooled features the classifier reads), `logits`,
                          `aux_logits` (a head on the stem: conv 1x1, BN, ReLU, global average
                          pool, Linear) and `probabilities` (the softmax of the logits)
    NAME_input.npy        float32 [3, C, H, W] ([3, C, L]), from a fixed seed
    NAME_expected.npy     float32 [3, 10], ONNX Runtime's logits on that input (checked against
                          PyTorch's to 1e-4); for a file of several outputs,
                          NAME_expected_OUTPUT.npy, one per output

The export keeps BatchNormalization nodes in the graph (training=TrainingMode.PRESERVE on a
model in eval mode): the default, TrainingMode.EVAL, would fold each BN into the conv before it.

Run outside CI, with torch, onnx and onnxruntime (the benchmark venv, see bench/README.md):

    /work/bench-venv/bin/python interop/make_onnx_fixtures.py [NAME...]

(all of them when no NAME is given).
"""

import inspect
import os
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "cnn-cli",
                       "tests", "fixtures", "onnx")
OPSET = 17
BATCH = 3
TOLERANCE = 1e-4


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, ReLU."""

    def __init__(self, in_channels, channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                nn.BatchNorm2d(channels))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(self.flatten(self.avgpool(x)))


def conv_relu(in_channels, out_channels, kernel, padding=0):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=padding),
                         nn.ReLU(inplace=True))


class InceptionBlock(nn.Module):
    """GoogLeNet's block: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | maxpool 3x3 -> 1x1, on channels."""

    def __init__(self, in_channels):
        super().__init__()
        self.branch1 = conv_relu(in_channels, 8, 1)
        self.branch2 = nn.Sequential(conv_relu(in_channels, 8, 1), conv_relu(8, 16, 3, 1))
        self.branch3 = nn.Sequential(conv_relu(in_channels, 4, 1), conv_relu(4, 8, 5, 2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1),
                                     conv_relu(in_channels, 8, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_relu(3, 16, 3, 1), nn.MaxPool2d(2))
        self.inception = InceptionBlock(16)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8 + 16 + 8 + 8, 10)

    def forward(self, x):
        x = self.inception(self.stem(x))
        return self.fc(self.flatten(self.avgpool(x)))


class SqueezeExcitation(nn.Module):
    def __init__(self, channels, squeezed):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.relu(self.fc1(self.avgpool(x)))))


class MobileStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.4, 0.3]).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.5, 2.0]).reshape(1, 3, 1, 1))
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.stem = nn.Conv2d(3, 16, 3, stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = nn.Hardswish()
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.act2 = nn.ReLU6()
        self.se = SqueezeExcitation(16, 4)
        self.project = nn.Conv2d(16, 24, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(24)
        self.prelu = nn.PReLU(24)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=True)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(24 * 8 * 8, 10)

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = self.act1(self.bn1(self.stem(self.pad(x))))
        x = self.se(self.act2(self.bn2(self.depthwise(x))))
        x = self.prelu(self.bn3(self.project(x)))
        return self.fc(self.flatten(self.pool(x)))


class SequenceStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(4, 8, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(8)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool1d(2)
        self.conv2 = nn.Conv1d(8, 8, 3, padding=2, dilation=2)
        self.act = nn.LeakyReLU(0.2)
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.flatten(self.avgpool(self.act(self.conv2(x)))))


class AuxHeadsStyle(nn.Module):
    """A classifier that also gives its features, an auxiliary head's logits and its
    probabilities, in that order: the main output (the logits) is neither first nor last."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_relu(3, 16, 3, 1), nn.MaxPool2d(2))
        self.aux = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8),
                                 nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, 10))
        self.body = nn.Sequential(conv_relu(16, 32, 3, 1), nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        features = self.flatten(self.avgpool(self.body(x)))
        logits = self.fc(features)
        return features, logits, self.aux(x), torch.softmax(logits, 1)


def randomise_batch_norms(model, generator):
    """Running statistics and affine parameters far from PyTorch's 0/1 defaults."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.25)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)


def export(model, shape, path, outputs):
    kwargs = dict(
        input_names=["input"],
        output_names=outputs,
        dynamic_axes={name: {0: "batch"} for name in ["input", *outputs]},
        opset_version=OPSET,
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=True,
    )
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    with warnings.catch_warnings():
        # The legacy exporter's deprecation notice, and a constant-folding warning meant for
        # models exported in training mode (this one is in eval mode).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*constant folding", category=UserWarning)
        torch.onnx.export(model, (torch.zeros(1, *shape),), path, **kwargs)


def make(name, model_class, shape, seed, outputs=("logits",)):
    torch.manual_seed(seed)
    model = model_class()
    randomise_batch_norms(model, torch.Generator().manual_seed(seed + 1))
    model.eval()

    path = os.path.join(OUT_DIR, name + ".onnx")
    export(model, shape, path, list(outputs))
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)

    x = np.random.default_rng(seed + 2).standard_normal((BATCH, *shape)).astype(np.float32)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    expected = session.run(list(outputs), {"input": x})
    with torch.no_grad():
        reference = model(torch.from_numpy(x))
    if len(outputs) == 1:
        reference = (reference,)
    diff = 0.0
    for output, ours, theirs in zip(outputs, expected, reference):
        assert ours.dtype == np.float32 and ours.shape[0] == BATCH, (output, ours.shape)
        diff = max(diff, float(np.max(np.abs(ours - theirs.numpy()))))
    assert diff <= TOLERANCE, f"{name}: ONNX Runtime and PyTorch differ by {diff}"

    np.save(os.path.join(OUT_DIR, name + "_input.npy"), x)
    if len(outputs) == 1:
        np.save(os.path.join(OUT_DIR, name + "_expected.npy"), expected[0])
    else:
        for output, values in zip(outputs, expected):
            np.save(os.path.join(OUT_DIR, f"{name}_expected_{output}.npy"), values)
    ops = sorted({node.op_type for node in proto.graph.node})
    print(f"{name}.onnx: {os.path.getsize(path)} bytes, {len(proto.graph.node)} nodes, "
          f"opset {proto.opset_import[0].version}; max |ORT - PyTorch| = {diff:.3g}")
    print(f"  ops: {', '.join(ops)}")


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    print(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}")
    fixtures = {
        "resnet_style": (ResNetStyle, (1, 28, 28), 1, ("logits",)),
        "inception_style": (InceptionStyle, (3, 32, 32), 2, ("logits",)),
        "mobile_style": (MobileStyle, (3, 32, 32), 3, ("logits",)),
        "sequence_style": (SequenceStyle, (4, 50), 4, ("logits",)),
        "aux_heads_style": (AuxHeadsStyle, (3, 32, 32), 5,
                            ("features", "logits", "aux_logits", "probabilities")),
    }
    names = sys.argv[1:] or list(fixtures)
    for name in names:
        model_class, shape, seed, outputs = fixtures[name]
        make(name, model_class, shape, seed, outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
