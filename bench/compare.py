"""Runs `cnn bench`, PyTorch and ONNX Runtime side by side, alternating them in one session
(this machine's speed drifts by up to 30% within minutes, so only ratios taken close together
mean anything), and prints each figure's median over rounds with the ratios.

Usage: python bench/compare.py [--cnn target/release/cnn] [--rounds 3] [--threads 2] [--isa avx2]
Needs a Python with torch, onnx and onnxruntime (see bench/README.md).

--avx2-only measures, on a machine with AVX-512, what a CPU without it runs: every side runs
with bench/avx2-only/hide_avx512.so preloaded, which answers CPUID without AVX-512 (and
without AMX and AVX-VNNI), so that cnn, gemm, PyTorch, oneDNN and ONNX Runtime each pick their
AVX2 + FMA kernels by themselves; GLIBC_TUNABLES does the same for glibc's string functions.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


AVX2_ONLY_ENV = {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD"}


def hide_avx512_library():
    """Builds bench/avx2-only/hide_avx512.so when missing or older than its source."""
    source = os.path.join(HERE, "avx2-only", "hide_avx512.c")
    library = os.path.join(HERE, "..", "target", "hide_avx512.so")
    if not os.path.exists(library) or os.path.getmtime(library) < os.path.getmtime(source):
        os.makedirs(os.path.dirname(library), exist_ok=True)
        subprocess.run(["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", library, source], check=True)
    return os.path.abspath(library)


def run(command, env=None):
    result = subprocess.run(command, capture_output=True, text=True,
                            env=None if env is None else {**os.environ, **env})
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cnn", default=os.path.join(HERE, "..", "target", "release", "cnn"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--archs", default="lenet5,cnn4")
    parser.add_argument("--onnx", metavar="FILES",
                        help="comma-separated ONNX files: cnn bench --model FILE against ONNX "
                             "Runtime on the same file (inference only), instead of --archs")
    parser.add_argument("--avx2-only", action="store_true",
                        help="hide AVX-512 from every side (see the module doc)")
    args = parser.parse_args()
    env = {**AVX2_ONLY_ENV, "LD_PRELOAD": hide_avx512_library()} if args.avx2_only else {}
    common = ["--threads", str(args.threads), "--batch", "64", "--infer-batch", "256",
              "--repeats", str(args.repeats), "--seconds", str(args.seconds)]
    py = [sys.executable, os.path.join(HERE, "torch_bench.py")]
    sides = {
        "cnn": lambda arch, phases: run([args.cnn, "bench", "--json", "--arch", arch,
                                         "--phases", phases] + common, env),
        "torch": lambda arch, phases: run(py + ["--engine", "torch", "--arch", arch,
                                                "--phases", phases] + common, env),
        "ort": lambda arch, phases: run(py + ["--engine", "onnxruntime", "--arch", arch,
                                              "--phases", phases] + common, env),
    }
    metrics = [("train_images_per_s", "training images/s, batch 64", ["cnn", "torch"], "train"),
               ("infer_latency_us_p50", "inference latency p50 us, batch 1", ["cnn", "torch", "ort"], "latency"),
               ("infer_latency_us_p99", "inference latency p99 us, batch 1", ["cnn", "torch", "ort"], "latency"),
               ("infer_images_per_s", "inference images/s, batch 256", ["cnn", "torch", "ort"], "throughput"),
               ("peak_rss_bytes", "peak RSS MiB while training", ["cnn", "torch"], "train")]
    if args.onnx:
        return compare_onnx_files(args, common, py, env)
    for arch in args.archs.split(","):
        values = {}
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for side in order:
                phases = "train,latency,throughput" if side != "ort" else "latency,throughput"
                result = sides[side](arch, phases)
                for key, _, who, _ in metrics:
                    if side in who and key != "peak_rss_bytes":
                        values.setdefault((key, side), []).append(result[key])
                if side in ("cnn", "torch"):
                    # Memory of a process that only trains, as the issue asks.
                    only_train = sides[side](arch, "train")
                    values.setdefault(("peak_rss_bytes", side), []).append(only_train["peak_rss_bytes"] / 2**20)
        print(f"\n{arch}: {args.threads} threads, {args.rounds} alternating rounds, medians"
              f"{' (AVX-512 hidden from every side)' if args.avx2_only else ''}")
        print(f"{'figure':<38} {'cnn':>10} {'PyTorch':>10} {'ORT':>10} {'cnn/PyTorch':>12} {'cnn/ORT':>9}")
        for key, label, who, _ in metrics:
            med = {s: statistics.median(values[(key, s)]) for s in who}
            # Ratios per round, then their median: both sides ran minutes apart at most.
            ratio = lambda other: statistics.median(
                a / b for a, b in zip(values[(key, "cnn")], values[(key, other)]))
            cells = [f"{med.get(s, float('nan')):>10.1f}" if s in med else f"{'':>10}" for s in ("cnn", "torch", "ort")]
            r_torch = f"{ratio('torch'):>12.2f}"
            r_ort = f"{ratio('ort'):>9.2f}" if "ort" in who else f"{'':>9}"
            print(f"{label:<38} {' '.join(cells)} {r_torch} {r_ort}")


def compare_onnx_files(args, common, py, env):
    """Inference on ONNX files as they are: `cnn bench --model FILE` and ONNX Runtime."""
    metrics = [("infer_latency_us_p50", "inference latency p50 us, batch 1"),
               ("infer_latency_us_p99", "inference latency p99 us, batch 1"),
               ("infer_images_per_s", "inference images/s, batch 256")]
    for path in args.onnx.split(","):
        sides = {
            "cnn": lambda: run([args.cnn, "bench", "--json", "--model", path,
                                "--phases", "latency,throughput"] + common, env),
            "ort": lambda: run(py + ["--engine", "onnxruntime", "--onnx", path,
                                     "--phases", "latency,throughput"] + common, env),
        }
        values = {}
        for r in range(args.rounds):
            for side in (list(sides) if r % 2 == 0 else list(reversed(sides))):
                result = sides[side]()
                for key, _ in metrics:
                    values.setdefault((key, side), []).append(result[key])
        print(f"\n{os.path.basename(path)}: {args.threads} threads, {args.rounds} alternating rounds,"
              f" medians{' (AVX-512 hidden from every side)' if args.avx2_only else ''}")
        print(f"{'figure':<38} {'cnn':>10} {'ORT':>10} {'cnn/ORT':>9}")
        for key, label in metrics:
            med = {s: statistics.median(values[(key, s)]) for s in sides}
            ratio = statistics.median(a / b for a, b in zip(values[(key, "cnn")], values[(key, "ort")]))
            print(f"{label:<38} {med['cnn']:>10.1f} {med['ort']:>10.1f} {ratio:>9.2f}")


if __name__ == "__main__":
    main()
