"""The PyTorch (and ONNX Runtime) side of `cnn bench`: the same networks, measured the same way.

Training: forward, cross-entropy, backward, SGD (momentum 0.9) step on random batches already in
memory, images/s. Inference: batch-1 latency (every call timed; p50, p99) and batch-N
throughput, in eval mode without autograd. Each figure is the median of --repeats repeats of
--seconds after a warm-up. Prints one JSON object with the same field names as `cnn bench --json`.

Usage: python torch_bench.py --engine torch|onnxruntime --arch lenet5|cnn4|resnet20|separable ...
"""

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time


def build(arch, classes):
    import torch.nn as nn
    if arch == "lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, classes))
    if arch == "cnn4":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, classes))
    if arch == "resnet20":
        return resnet20(classes)
    if arch == "separable":
        def separable(c_in, c_out):
            return [nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False),
                    nn.BatchNorm2d(c_in), nn.ReLU(),
                    nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            *separable(32, 64), nn.MaxPool2d(2), *separable(64, 128), *separable(128, 128),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, classes))
    raise SystemExit(f"unknown arch {arch}")


def resnet20(classes):
    """He et al.'s CIFAR ResNet-20 on one channel, as torchvision writes its basic block (1x1
    strided convolution and batch norm on the shortcut where the shape changes)."""
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.downsample = None
            if stride != 1 or c_in != c_out:
                self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                                nn.BatchNorm2d(c_out))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    layers = [nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)]
    c_in = 16
    for c, stride in [(16, 1), (32, 2), (64, 2)]:
        for i in range(3):
            layers.append(Block(c_in, c, stride if i == 0 else 1))
            c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes)]
    return nn.Sequential(*layers)


def rate(seconds, images, work):
    start = time.perf_counter()
    done = 0
    while time.perf_counter() - start < seconds or done == 0:
        work()
        done += images
    return done / (time.perf_counter() - start)


def spread(values):
    values = sorted(values)
    return {"median": values[len(values) // 2], "min": values[0], "max": values[-1]}


def latency(call, seconds, repeats):
    for _ in range(20):
        call()
    everything, medians = [], []
    for _ in range(repeats):
        calls = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            call()
            calls.append((time.perf_counter() - t) * 1e6)
        medians.append(statistics.median(calls))
        everything += calls
    everything.sort()
    pick = lambda p: everything[round((len(everything) - 1) * p)]
    return pick(0.5), pick(0.99), spread(medians)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["torch", "onnxruntime"], default="torch")
    parser.add_argument("--arch", default="lenet5")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--infer-batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--phases", default="train,latency,throughput")
    parser.add_argument("--onnx", metavar="FILE",
                        help="with --engine onnxruntime: run this ONNX file (its own input shape)")
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    if args.onnx:
        return bench_onnx_file(args, phases)

    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    model = build(args.arch, args.classes)
    report = {"engine": args.engine, "arch": args.arch, "threads": args.threads,
              "batch": args.batch, "infer_batch": args.infer_batch,
              "version": torch.__version__,
              "cpu_capability": torch.backends.cpu.get_cpu_capability()}

    if "train" in phases and args.engine == "torch":
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()
        batches = [(torch.rand(args.batch, 1, 28, 28) * 2 - 1,
                    torch.randint(0, args.classes, (args.batch,))) for _ in range(4)]
        step = [0]

        def train_step():
            x, y = batches[step[0] % len(batches)]
            step[0] += 1
            optimizer.zero_grad(set_to_none=False)
            loss_fn(model(x), y).backward()
            optimizer.step()

        for _ in range(3):
            train_step()
        s = spread([rate(args.seconds, args.batch, train_step) for _ in range(args.repeats)])
        report["train_images_per_s"] = s["median"]
        report["train_images_per_s_spread"] = s

    model.eval()
    single = np.random.rand(1, 1, 28, 28).astype(np.float32) * 2 - 1
    large = np.random.rand(args.infer_batch, 1, 28, 28).astype(np.float32) * 2 - 1
    if args.engine == "torch":
        single_t, large_t = torch.from_numpy(single), torch.from_numpy(large)

        def infer(x):
            with torch.inference_mode():
                model(x)
        run_single, run_large = (lambda: infer(single_t)), (lambda: infer(large_t))
    else:
        import onnxruntime as ort
        path = os.path.join(tempfile.mkdtemp(), "model.onnx")
        torch.onnx.export(model, torch.from_numpy(single), path, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                          dynamo=False)
        session = ort_session(path, args.threads)
        report["version"] = ort.__version__
        run_single = lambda: session.run(None, {"x": single})
        run_large = lambda: session.run(None, {"x": large})

    measure_inference(report, run_single, run_large, args, phases)
    report["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(report))


def measure_inference(report, run_single, run_large, args, phases):
    """Batch-1 latency and batch-`--infer-batch` throughput, into `report`."""
    if "latency" in phases:
        p50, p99, s = latency(run_single, args.seconds, args.repeats)
        report.update(infer_latency_us_p50=p50, infer_latency_us_p99=p99,
                      infer_latency_us_p50_spread=s)
    if "throughput" in phases:
        run_large()
        s = spread([rate(args.seconds, args.infer_batch, run_large) for _ in range(args.repeats)])
        report["infer_images_per_s"] = s["median"]
        report["infer_images_per_s_spread"] = s


def ort_session(path, threads):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def bench_onnx_file(args, phases):
    """ONNX Runtime's inference figures for an ONNX file as it is (`--onnx`)."""
    import numpy as np
    import onnxruntime as ort
    session = ort_session(args.onnx, args.threads)
    first = session.get_inputs()[0]
    shape = [d for d in first.shape[1:]]
    single = np.random.rand(1, *shape).astype(np.float32) * 2 - 1
    large = np.random.rand(args.infer_batch, *shape).astype(np.float32) * 2 - 1
    report = {"engine": "onnxruntime", "model": args.onnx, "threads": args.threads,
              "infer_batch": args.infer_batch, "version": ort.__version__}
    run_single = lambda: session.run(None, {first.name: single})
    run_large = lambda: session.run(None, {first.name: large})
    measure_inference(report, run_single, run_large, args, phases)
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
