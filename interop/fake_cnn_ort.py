#!/usr/bin/env python3
"""A stand-in for `cnn run` that runs the model in ONNX Runtime. It exists only to test the
plumbing of interop/onnx_conformance.py (baking inputs, writing and reading .npy files, sorting
results) before cnn has `run`; it says nothing about cnn.

It takes what cnn takes: `fake_cnn_ort.py run --model M.onnx --input X.npy --output Y.npy`, one
float32 input of rank 2 or 4, and with several model outputs `--output` is a folder that gets
`<output name>.npy` each; outputs are written as float32. What ONNX Runtime cannot load or run
for want of an implementation is reported as "not supported", other errors as errors (exit 1).

Run the runner with it from a Python that has onnxruntime, on PATH as python3, e.g.
    source /work/venvs/onnx122/bin/activate
    python interop/onnx_conformance.py interop/fake_cnn_ort.py
"""

import argparse
import os
import sys

import numpy as np


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    return 1


def main(argv):
    parser = argparse.ArgumentParser(prog="fake_cnn_ort.py")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run")
    run.add_argument("--model", required=True)
    run.add_argument("--input", required=True)
    run.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # errors only: no warnings on stderr

    x = np.load(args.input, allow_pickle=False)
    if x.dtype != np.float32 or x.ndim not in (2, 4):
        return fail(f"input of {x.dtype}, rank {x.ndim} is not supported")
    try:
        session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    except Exception as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        if "NOT_IMPLEMENTED" in message or "not implemented" in message.lower():
            return fail(f"{message} (not supported)")
        return fail(f"cannot load the model: {message}")
    inputs = session.get_inputs()
    if len(inputs) != 1:
        return fail(f"the model has {len(inputs)} inputs; more than one is not supported")
    outputs = session.get_outputs()
    try:
        values = session.run(None, {inputs[0].name: x})
    except Exception as error:
        return fail(f"running the model: {str(error).strip().splitlines()[0]}")
    if not all(isinstance(v, np.ndarray) for v in values):
        return fail("an output that is not a tensor is not supported")
    if len(outputs) == 1:
        np.save(args.output, values[0].astype(np.float32))
    else:
        os.makedirs(args.output, exist_ok=True)
        for output, value in zip(outputs, values):
            np.save(os.path.join(args.output, output.name + ".npy"), value.astype(np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
