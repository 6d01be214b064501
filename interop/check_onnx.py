"""Exports `cnn` models to ONNX and checks the files with the ONNX project's own tools: each
file passes `onnx.checker` (full check, with shape inference), runs in ONNX Runtime, and gives
the same logits (max |difference| <= 1e-4), probabilities and classes as `cnn predict` on real
Fashion-MNIST test images. Then imports each exported file back (`cnn import`) and checks that
`cnn predict` on the imported model gives the same answers.

Usage: python check_onnx.py PATH/TO/cnn WORK_DIR MODEL.safetensors...
Needs onnx, onnxruntime and numpy; reads the test images from the Debian package
dataset-fashion-mnist.
"""

import gzip
import json
import os
import subprocess
import sys
import zlib
import struct

import numpy as np
import onnx
import onnxruntime

TEST_IMAGES = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
PICTURES = 32
TOLERANCE = 1e-4


def png(path, pixels):
    """A greyscale PNG of a uint8 array (written by hand: numpy is all this script needs)."""
    height, width = pixels.shape
    raw = b"".join(b"\0" + pixels[y].tobytes() for y in range(height))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_pictures(folder):
    with gzip.open(TEST_IMAGES) as f:
        data = f.read()
    count, height, width = struct.unpack(">III", data[4:16])
    images = np.frombuffer(data[16:], np.uint8).reshape(count, height, width)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(PICTURES):
        path = os.path.join(folder, f"test{i:02}.png")
        png(path, images[i * 97])
        paths.append(path)
    return paths


def predict(cnn, model, pictures, save_input=None):
    command = [cnn, "predict", "--quiet", "--json", "--model", model] + pictures
    if save_input:
        command += ["--save-input", save_input]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def main():
    cnn, work, models = sys.argv[1], sys.argv[2], sys.argv[3:]
    pictures = test_pictures(os.path.join(work, "pictures"))
    print(f"{'model':<28} {'ONNX ops':<64} {'max |logit diff|':>16}  classes")
    worst = 0.0
    for model in models:
        name = os.path.splitext(os.path.basename(model))[0]
        exported = os.path.join(work, name + ".onnx")
        subprocess.run([cnn, "export", "--quiet", "--model", model, "--onnx", exported,
                        "--softmax"], check=True)
        proto = onnx.load(exported)
        onnx.checker.check_model(proto, full_check=True)
        assert proto.opset_import[0].version >= 17
        batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param, "the batch dimension is not dynamic"

        inputs = os.path.join(work, name + ".inputs.npy")
        answers = predict(cnn, model, pictures, save_input=inputs)
        x = np.load(inputs)
        session = onnxruntime.InferenceSession(exported, providers=["CPUExecutionProvider"])
        logits, probabilities = session.run(["logits", "probabilities"], {"input": x})
        ours = np.array([a["logits"] for a in answers], dtype=np.float32)
        diff = float(np.abs(logits - ours).max())
        prob_diff = float(np.abs(probabilities - np.array(
            [a["probabilities"] for a in answers], dtype=np.float32)).max())
        same = all(a["classes"][int(np.argmax(l))] == a["class"] for l, a in zip(logits, answers))
        # Any batch size: the first picture alone gives the same scores.
        single = session.run(["logits"], {"input": x[:1]})[0]
        assert np.abs(single - logits[:1]).max() <= TOLERANCE

        imported = os.path.join(work, name + ".imported.safetensors")
        subprocess.run([cnn, "import", "--quiet", exported, "--out", imported], check=True)
        again = predict(cnn, imported, pictures)
        back = float(np.abs(np.array([a["logits"] for a in again]) - ours).max())
        same_back = [a["class"] for a in again] == [a["class"] for a in answers]

        ops = ",".join(sorted({n.op_type for n in proto.graph.node}))
        print(f"{name:<28} {ops:<64} {diff:>16.2e}  {'same' if same else 'DIFFERENT'}"
              f" (probabilities {prob_diff:.1e}; imported back: {back:.1e},"
              f" {'same' if same_back else 'DIFFERENT'})")
        assert same and same_back, f"{name}: the classes differ"
        assert diff <= TOLERANCE and prob_diff <= TOLERANCE and back <= TOLERANCE, name
        worst = max(worst, diff)
    print(f"{len(models)} models, {PICTURES} pictures each: ONNX Runtime agrees with cnn "
          f"(max |logit difference| {worst:.2e})")


if __name__ == "__main__":
    main()
