"""The round trip cnn -> PyTorch -> cnn: `cnn export --pytorch` writes a module whose state_dict
loads the model file with strict=True and computes the same logits as `cnn run`; a few steps of
training in PyTorch later, `save_for_cnn` and `cnn import` bring the new weights back, and `cnn
run` on the imported model gives PyTorch's logits again (max |difference| <= 1e-5).

Usage: python check_torch_export.py PATH/TO/cnn WORK_DIR MODEL.safetensors...
Needs torch, safetensors and numpy (outside CI: torch is a 5 GB download).
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import torch
from safetensors.torch import load_file

TOLERANCE = 1e-5


def run(cnn, model, x, work):
    inputs, outputs = os.path.join(work, "x.npy"), os.path.join(work, "y.npy")
    np.save(inputs, x)
    subprocess.run([cnn, "run", "--model", model, "--input", inputs, "--output", outputs],
                   check=True)
    return np.load(outputs)


def main():
    cnn, work, models = sys.argv[1], sys.argv[2], sys.argv[3:]
    os.makedirs(work, exist_ok=True)
    torch.manual_seed(0)
    for path in models:
        name = os.path.splitext(os.path.basename(path))[0]
        source = os.path.join(work, name + ".py")
        subprocess.run([cnn, "export", "--quiet", "--model", path, "--pytorch", source], check=True)
        spec = importlib.util.spec_from_file_location(name, source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        net = module.Net()
        net.load_state_dict(load_file(path), strict=True)
        net.eval()
        x = np.random.default_rng(0).standard_normal((4, *module.INPUT_SHAPE)).astype(np.float32)
        with torch.no_grad():
            ours = net(torch.from_numpy(x)).numpy()
        there = float(np.abs(ours - run(cnn, path, x, work)).max())

        # Train on in PyTorch, then bring the weights back.
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        net.train()
        for _ in range(5):
            batch = torch.randn(16, *module.INPUT_SHAPE)
            labels = torch.randint(0, len(module.CLASSES), (16,))
            loss = torch.nn.functional.cross_entropy(net(batch), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        trained = os.path.join(work, name + ".torch.safetensors")
        module.save_for_cnn(net, trained)
        back = os.path.join(work, name + ".back.safetensors")
        subprocess.run([cnn, "import", "--quiet", trained, "--out", back], check=True)
        with torch.no_grad():
            expected = net(torch.from_numpy(x)).numpy()
        changed = float(np.abs(expected - ours).max())
        returned = float(np.abs(expected - run(cnn, back, x, work)).max())
        scale = max(1.0, float(np.abs(ours).max()), float(np.abs(expected).max()))
        print(f"{name:<16} largest |logit| {scale:7.2f}; cnn vs PyTorch {there:.1e}; after 5 "
              f"PyTorch steps (logits moved by {changed:.2f}), imported back: {returned:.1e}")
        assert there <= TOLERANCE * scale and returned <= TOLERANCE * scale, name
        assert changed > 1e-3, f"{name}: training did not change the logits"


if __name__ == "__main__":
    main()
