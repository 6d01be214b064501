"""Runs the ONNX project's own backend test cases through `cnn run` and tabulates, per op, how
many pass, fail or are unsupported.

The cases come with the installed `onnx` package, under onnx/backend/test/data/: `node/*` (one
op each, plus `_expanded` variants that spell a function op out in simpler ops) and
`pytorch-converted/*` (small PyTorch modules). Each case folder holds `model.onnx` and
`test_data_set_N/input_K.pb`, `output_K.pb` (TensorProto). onnx 1.23 no longer ships `node/`;
onnx 1.22.0 is the last wheel that does.

A node case is selected when its model's ops are among OPS below; an `_expanded` variant goes with
the case it expands (same name without `_expanded...`) and is reported unsupported, without
running cnn, when it uses ops outside OPS. A pytorch-converted case runs when all its ops are in
OPS; the others are counted apart, as outside the op list.

`cnn` takes one float32 input: `CNN run --model M.onnx --input X.npy --output Y.npy` (rank 4 NCHW,
rank 3 [N, C, L], rank 2 [N, F] or rank 1 [N]; with several model outputs `--output` is a folder and cnn writes
`<output name>.npy` there). So every input after the first is baked into a copy of the model as
an initializer. A case whose first input is not a float32 tensor of rank 1 to 4 is unsupported
(cnn is not called). A case passes when cnn exits 0 and every output has the expected shape and
matches within rtol 1e-3, atol 1e-5 (compared as float64, so a bool or int64 output can match
cnn's float32 one); it is unsupported when cnn exits non-zero with "not supported" in its stderr;
anything else (mismatch, crash, other error, timeout) fails.

Exits 0 whatever the cases do, unless `--require-pass OP1,OP2` (or `all`) names an op with a failing case
(a node case of that op, or a pytorch-converted case all of whose ops are named); 2 when the
runner itself cannot run (no test data, bad arguments).

Usage: python interop/onnx_conformance.py CNN_BINARY [--out table.md] [--require-pass OPS]
           [--suite node,pytorch-converted] [--filter REGEX] [--jobs N] [--timeout S]
Needs onnx (1.22.0 for the node cases) and numpy; interop/fake_cnn_ort.py stands in for cnn.
"""

import argparse
import concurrent.futures
import dataclasses
import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import numpy_helper

OPS = [
    "Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization",
    "Gemm", "MatMul", "Add", "Sum", "Sub", "Mul", "Div", "Concat", "Reshape", "Flatten",
    "Transpose", "Squeeze", "Unsqueeze", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Clip",
    "HardSigmoid", "HardSwish", "Softmax", "Dropout", "LRN", "Constant", "ConstantOfShape",
    "Identity", "Shape", "Gather", "Pad",
]
SUITES = ["node", "pytorch-converted"]
RTOL, ATOL = 1e-3, 1e-5
PASS, FAIL, UNSUPPORTED = "pass", "fail", "unsupported"
BAD_INPUT = "input is not a float32 tensor of rank 1 to 4"
EXPANDED = re.compile(r"_expanded(_ver\d+)?$")


@dataclasses.dataclass
class Case:
    suite: str
    name: str
    path: str
    group: str          # the row of the table: the op, or the ops of a pytorch-converted case
    ops: frozenset      # the ops the model uses
    skip: str = ""      # a reason to report it unsupported without running cnn


@dataclasses.dataclass
class Result:
    case: Case
    status: str
    reason: str = ""    # cases with the same status and reason are listed together
    detail: str = ""    # said after the case's name
    ran: bool = False   # whether cnn was called


def model_ops(model):
    return frozenset(node.op_type for node in model.graph.node)


def discover(root, suites, name_filter):
    """The selected cases, and the pytorch-converted ones outside the op list (name, extra ops)."""
    wanted = set(OPS)
    cases, outside = [], []
    for suite in suites:
        folders = sorted(glob.glob(os.path.join(root, suite, "*", "model.onnx")))
        models = {os.path.basename(os.path.dirname(f)): f for f in folders}
        ops_of = {name: model_ops(onnx.load(f, load_external_data=False))
                  for name, f in models.items() if name_filter.search(name)}
        for name, ops in ops_of.items():
            path = os.path.dirname(models[name])
            if suite == "pytorch-converted":
                if ops <= wanted:
                    cases.append(Case(suite, name, path, "+".join(sorted(ops)), ops))
                else:
                    outside.append((name, sorted(ops - wanted)))
                continue
            base = EXPANDED.sub("", name)
            if base != name:
                # Goes with the case it expands, whatever ops its body uses.
                if base not in models:
                    continue
                base_ops = ops_of.get(base) or model_ops(onnx.load(models[base]))
                if len(base_ops) != 1 or not base_ops <= wanted:
                    continue
                others = sorted(ops - wanted)
                skip = f"expanded variant uses ops outside the op list: {', '.join(others)}"
                cases.append(Case(suite, name, path, next(iter(base_ops)), ops,
                                  skip if others else ""))
            elif ops & wanted:
                # Node cases hold one op each; should one hold more, the first listed op names it.
                group = next(op for op in OPS if op in ops)
                others = sorted(ops - wanted)
                skip = f"uses ops outside the op list: {', '.join(others)}" if others else ""
                cases.append(Case(suite, name, path, group, ops, skip))
    return cases, outside


def numbered(folder, prefix):
    files = glob.glob(os.path.join(folder, prefix + "_*.pb"))
    return sorted(files, key=lambda f: int(re.search(r"_(\d+)\.pb$", f).group(1)))


def load_tensor(path):
    tensor = onnx.TensorProto()
    with open(path, "rb") as f:
        tensor.ParseFromString(f.read())
    return numpy_helper.to_array(tensor)


def is_tensor(value_info):
    return value_info.type.WhichOneof("value") == "tensor_type"


def describe(array):
    return f"{array.dtype}, rank {array.ndim}"


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def first_line(text, containing=""):
    """The first non-blank line (that contains `containing`), without colour codes, cut short."""
    for line in ANSI_ESCAPE.sub("", text).splitlines():
        line = line.strip()
        if line and containing in line.lower():
            return line if len(line) <= 240 else line[:237] + "..."
    return ""


def compare(actual, expected):
    """None when they match, else what differs."""
    if actual.shape != expected.shape:
        return f"shape {list(actual.shape)}, expected {list(expected.shape)}"
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    try:
        np.testing.assert_allclose(a, e, rtol=RTOL, atol=ATOL)
        return None
    except AssertionError:
        bad = ~np.isclose(a, e, rtol=RTOL, atol=ATOL, equal_nan=True)
        with np.errstate(invalid="ignore"):
            worst = float(np.nanmax(np.abs(a - e))) if a.size else 0.0
        return f"{int(bad.sum())} of {a.size} values differ, max |diff| {worst:.3g}"


def run_data_set(cnn, case, model, data_set, work, timeout):
    """Result for one test_data_set folder: (status, reason, detail, ran)."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    input_files = numbered(data_set, "input")
    if not inputs or not input_files:
        return UNSUPPORTED, BAD_INPUT, "no input", False
    if not is_tensor(inputs[0]):
        return UNSUPPORTED, BAD_INPUT, inputs[0].type.WhichOneof("value"), False
    x = load_tensor(input_files[0])
    if x.dtype != np.float32 or x.ndim not in (1, 2, 3, 4):
        return UNSUPPORTED, BAD_INPUT, describe(x), False
    if not all(is_tensor(v) for v in graph.output):
        return UNSUPPORTED, "an output is not a tensor", "", False
    expected = [load_tensor(f) for f in numbered(data_set, "output")]

    baked = list(zip(inputs[1:], input_files[1:]))
    model_path = os.path.join(case.path, "model.onnx")
    if baked:
        if not all(is_tensor(v) for v, _ in baked):
            return UNSUPPORTED, "a second input is not a tensor, cannot bake it", "", False
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        names = {v.name for v, _ in baked}
        kept = [v for v in copy.graph.input if v.name not in names]
        del copy.graph.input[:]
        copy.graph.input.extend(kept)
        for value, f in baked:
            copy.graph.initializer.append(numpy_helper.from_array(load_tensor(f), value.name))
        model_path = os.path.join(work, "model.onnx")
        onnx.save(copy, model_path)

    x_path = os.path.join(work, "input.npy")
    np.save(x_path, x)
    several = len(graph.output) > 1
    y_path = os.path.join(work, "outputs" if several else "output.npy")
    if several:
        os.makedirs(y_path, exist_ok=True)
    command = [cnn, "run", "--model", model_path, "--input", x_path, "--output", y_path]
    # In a session of its own, so that a timeout ends whatever it started too.
    done = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = done.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(done.pid, signal.SIGKILL)
        done.communicate()
        return FAIL, f"timed out after {timeout:g} s", "", True
    stderr = stderr.decode("utf-8", "replace")
    message = first_line(stderr) or first_line(stdout.decode("utf-8", "replace"))
    if done.returncode < 0:
        return FAIL, f"killed by signal {-done.returncode}", message, True
    if done.returncode != 0:
        if "not supported" in stderr.lower():
            return UNSUPPORTED, first_line(stderr, "not supported"), "", True
        return FAIL, f"exit {done.returncode}: {message}", "", True

    paths = ([os.path.join(y_path, v.name + ".npy") for v in graph.output] if several
             else [y_path])
    for value, path, want in zip(graph.output, paths, expected):
        if not os.path.exists(path):
            return FAIL, f"cnn wrote no {os.path.basename(path)}", "", True
        try:
            got = np.load(path, allow_pickle=False)
        except Exception as error:  # a file np.load cannot read is cnn's failure, not ours
            return FAIL, f"unreadable {os.path.basename(path)}: {error}", "", True
        difference = compare(got, want)
        if difference:
            label = f"output {value.name}: " if several else ""
            return FAIL, "mismatch", label + difference, True
    return PASS, "", "", True


def run_case(cnn, case, timeout):
    if case.skip:
        return Result(case, UNSUPPORTED, case.skip)
    try:
        model = onnx.load(os.path.join(case.path, "model.onnx"))
        data_sets = sorted(glob.glob(os.path.join(case.path, "test_data_set_*")))
        if not data_sets:
            return Result(case, UNSUPPORTED, "the case has no test data set")
        for data_set in data_sets:
            with tempfile.TemporaryDirectory(prefix="onnx-conformance-") as work:
                status, reason, detail, ran = run_data_set(cnn, case, model, data_set, work,
                                                           timeout)
            if status != PASS:
                if len(data_sets) > 1:
                    detail = " ".join(filter(None, [os.path.basename(data_set), detail]))
                return Result(case, status, reason, detail, ran)
        return Result(case, PASS, ran=True)
    except Exception as error:  # the runner's own trouble with this case: say so, go on
        return Result(case, FAIL, f"runner error: {type(error).__name__}: {error}")


def render(title, results, group_order=None):
    groups = {}
    for result in results:
        groups.setdefault(result.case.group, []).append(result)
    order = [g for g in (group_order or []) if g in groups] + sorted(
        g for g in groups if g not in (group_order or []))
    lines = [f"## {title}", "",
             "| op | cases | passed | failed | unsupported | not run |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]

    def row(label, rs):
        count = lambda status: sum(r.status == status for r in rs)
        not_run = sum(not r.ran for r in rs)
        return (f"| {label} | {len(rs)} | {count(PASS)} | {count(FAIL)} | {count(UNSUPPORTED)} "
                f"| {not_run} |")

    lines += [row(g, groups[g]) for g in order]
    lines += [row("**all**", results), "",
              "(not run: unsupported without calling cnn, e.g. because of the input.)", ""]
    troubled = [g for g in order if any(r.status != PASS for r in groups[g])]
    if troubled:
        lines += [f"### {title}: failing and unsupported cases", ""]
    for g in troubled:
        lines.append(f"**{g}**")
        lines.append("")
        listed = {}
        for r in groups[g]:
            if r.status != PASS:
                listed.setdefault((r.status, r.reason), []).append(r)
        for (status, reason), rs in sorted(listed.items(), key=lambda kv: kv[0][0]):
            names = ", ".join(f"`{r.case.name}`" + (f" ({r.detail})" if r.detail else "")
                              for r in rs)
            lines.append(f"- {status}: {reason or '(no message)'}: {names}")
        lines.append("")
    return lines


def totals(label, results):
    count = lambda status: sum(r.status == status for r in results)
    return (f"{label}: {len(results)} cases; pass {count(PASS)}, fail {count(FAIL)}, "
            f"unsupported {count(UNSUPPORTED)}")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cnn", metavar="CNN_BINARY")
    parser.add_argument("--out", help="also write the markdown table to this file")
    parser.add_argument("--require-pass", default="", metavar="OP1,OP2",
                        help="exit 1 if a case of these ops fails (unsupported is fine)")
    parser.add_argument("--suite", default=",".join(SUITES),
                        help="comma-separated, from: " + ", ".join(SUITES))
    parser.add_argument("--data", help="the backend test data folder (default: the onnx package's)")
    parser.add_argument("--filter", default="", metavar="REGEX",
                        help="only cases whose name matches")
    parser.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per cnn run")
    args = parser.parse_args(argv)

    required = OPS if args.require_pass == "all" else [
        op for op in args.require_pass.split(",") if op]
    unknown = [op for op in required if op not in OPS]
    suites = [s for s in args.suite.split(",") if s]
    if unknown:
        parser.error(f"--require-pass: not in the op list: {', '.join(unknown)}")
    if any(s not in SUITES for s in suites):
        parser.error(f"--suite: choose from {', '.join(SUITES)}")
    cnn = os.path.abspath(args.cnn) if os.sep in args.cnn else args.cnn
    root = args.data or os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
    for suite in suites:
        if not os.path.isdir(os.path.join(root, suite)):
            print(f"warning: no {suite} test data in {root} (onnx {onnx.__version__}; "
                  "onnx 1.22.0 is the last wheel with node cases)", file=sys.stderr)
    suites = [s for s in suites if os.path.isdir(os.path.join(root, s))]
    if not suites:
        print("error: no ONNX backend test data found", file=sys.stderr)
        return 2

    started = time.monotonic()
    cases, outside = discover(root, suites, re.compile(args.filter))
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(lambda c: run_case(cnn, c, args.timeout), cases))
    elapsed = time.monotonic() - started

    lines = [f"# ONNX backend tests through `{os.path.basename(args.cnn)}`", "",
             f"onnx {onnx.__version__} test data; tolerance rtol {RTOL:g}, atol {ATOL:g}; "
             f"{len(cases)} cases in {elapsed:.1f} s with {max(1, args.jobs)} jobs.", ""]
    summary = []
    for suite in suites:
        mine = [r for r in results if r.case.suite == suite]
        lines += render(f"{suite} cases", mine, OPS if suite == "node" else None)
        summary.append(totals(suite, mine))
        if suite == "pytorch-converted":
            listed = ", ".join(f"`{n}` ({', '.join(ops)})" for n, ops in outside)
            lines.append(f"{len(outside)} pytorch-converted cases outside the op list (not counted "
                         "above)" + (f": {listed}" if outside else "."))
            lines.append("")
            summary[-1] += f"; {len(outside)} outside the op list"
    lines += ["## Totals", ""] + [f"- {s}" for s in summary] + [""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)

    if required:
        failing = [r for r in results if r.status == FAIL and (
            r.case.group in required if r.case.suite == "node" else r.case.ops <= set(required))]
        if failing:
            print(f"require-pass: {len(failing)} failing cases of {', '.join(required)}: "
                  + ", ".join(r.case.name for r in failing), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
