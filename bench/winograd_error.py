"""Rounding error of Winograd F(m x n, 3 x 3) in float32, measured the way the kernel tests
measure it (crates/cnn/tests/kernels.rs): |fast - exact| / max(|exact|, 1, scale / 10), with
`scale` the sum of the absolute values of the terms, over random inputs and weights in [-1, 1).
The tests allow 1e-5. This is why `kernels/winograd.rs` uses F(2x2, 3x3) and not the larger
tiles that do fewer multiplications.

    python bench/winograd_error.py            # needs numpy only

The transform matrices are built by the Toom-Cook construction from the interpolation points
(the point at infinity added), exactly in rationals, then rounded to float32, as in the kernel.
"""

import argparse
from fractions import Fraction

import numpy as np


def transforms(m, points, r=3):
    """A^T (m x a), G (a x r), B^T (a x a) for F(m, r), a = m + r - 1."""
    a = m + r - 1
    pts = [Fraction(p) for p in points]
    assert len(pts) == a - 1, "need m + r - 2 finite points"

    def times_root(c, root):  # polynomial c(x) * (x - root), ascending coefficients
        out = [Fraction(0)] * (len(c) + 1)
        for i, v in enumerate(c):
            out[i] -= root * v
            out[i + 1] += v
        return out

    at = [[p**i for p in pts] + [Fraction(int(i == m - 1))] for i in range(m)]
    g, bt = [], []
    for j, pj in enumerate(pts):
        others = [p for i, p in enumerate(pts) if i != j]
        norm, c = Fraction(1), [Fraction(1)]
        for p in others:
            norm *= pj - p
            c = times_root(c, p)
        g.append([pj**k / norm for k in range(r)])
        bt.append(c + [Fraction(0)] * (a - len(c)))
    g.append([Fraction(0)] * (r - 1) + [Fraction(1)])
    c = [Fraction(1)]
    for p in pts:
        c = times_root(c, p)
    bt.append(c)
    return [np.array([[float(x) for x in row] for row in mat]) for mat in (at, g, bt)]


def worst_error(rows, columns, channels, trials, rng, padded_rows=0):
    """The worst error of tiles of `rows = (m, points)` by `columns = (m, points)` outputs, the
    patch's last `padded_rows` rows zero (a tile on the bottom edge of a padded image)."""
    (my, py), (mx, px) = rows, columns
    (aty, gy, bty), (atx, gx, btx) = transforms(my, py), transforms(mx, px)
    ay, ax = my + 2, mx + 2
    worst = 0.0
    for _ in range(trials):
        d = rng.uniform(-1, 1, (channels, ay, ax)).astype(np.float32)
        if padded_rows:
            d[:, ay - padded_rows :, :] = 0
        w = rng.uniform(-1, 1, (8, channels, 3, 3)).astype(np.float32)
        exact = np.zeros((8, my, mx))
        scale = np.zeros((8, my, mx))
        for y in range(my):
            for x in range(mx):
                patch = d[:, y : y + 3, x : x + 3].astype(np.float64)
                exact[:, y, x] = np.einsum("cij,ocij->o", patch, w.astype(np.float64))
                scale[:, y, x] = np.einsum("cij,ocij->o", np.abs(patch), np.abs(w.astype(np.float64)))
        u = np.einsum("ij,ocjk,lk->ocil", gy, w.astype(np.float64), gx).astype(np.float32)
        v = np.einsum("ij,cjk,lk->cil", bty.astype(np.float32), d, btx.astype(np.float32))
        prod = np.zeros((8, ay, ax), np.float32)
        for c in range(channels):  # one channel at a time, in float32, as an SGEMM sums
            prod = (prod + u[:, c] * v[c].astype(np.float32)).astype(np.float32)
        out = np.einsum("ij,ojk,lk->oil", aty.astype(np.float32), prod, atx.astype(np.float32))
        out = out.astype(np.float32)
        error = np.abs(out - exact) / np.maximum(np.maximum(np.abs(exact), 1.0), scale / 10)
        worst = max(worst, float(error.max()))
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    two = (2, [0, 1, -1])
    half = Fraction(1, 2)
    cases = [
        ("F(2x2,3x3), points 0, 1, -1", two, two),
        ("F(4x4,3x3), points 0, 1, -1, 2, -2", (4, [0, 1, -1, 2, -2]), (4, [0, 1, -1, 2, -2])),
        ("F(4x4,3x3), points 0, 1, -1, 1/2, -1/2", (4, [0, 1, -1, half, -half]), (4, [0, 1, -1, half, -half])),
        ("F(4x4,3x3), points 0, 1, -1, 1/2, -2", (4, [0, 1, -1, half, -2]), (4, [0, 1, -1, half, -2])),
        ("F(4x2,3x3), rows 0, 1, -1, 2, -2", (4, [0, 1, -1, 2, -2]), two),
        ("F(4x2,3x3), rows 0, 1, -1, 1/2, -2", (4, [0, 1, -1, half, -2]), two),
    ]
    print(f"worst relative error over {args.trials} trials (the tests allow 1e-5)")
    print("  (inside the image; on the bottom edge with 2 rows of padding)")
    for name, rows, columns in cases:
        cells = []
        for padded in (0, 2):
            errors = [worst_error(rows, columns, c, args.trials, rng, padded) for c in (8, 20, 64)]
            cells.append(", ".join(f"C={c}: {e:.1e}" for c, e in zip((8, 20, 64), errors)))
        print(f"  {name:42} {cells[0]}; edge {cells[1]}")


if __name__ == "__main__":
    main()
