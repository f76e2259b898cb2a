"""Size and write time of a validation case's probability file: float16 against 8 bits.

The final validation keeps each case's probabilities for find-best's ensembles
(``model.export.save_probabilities``). The script builds the probabilities a trained network gives a
CT-like case (K classes, spheres of several sizes, confident softmax with noisy low bits), writes them
both ways with the function autoseg uses, reads them back, and records bytes, seconds and the largest
difference. Run it alone on the machine: it times compression.

    .venv/bin/python benchmarks/probability_files.py --shape 60 256 256 --classes 14 \\
        --out docs/benchmarks/probability_files.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autoseg.model.export import load_probabilities, save_probabilities


def probabilities(shape: tuple[int, int, int], classes: int, seed: int = 0) -> np.ndarray:
    """Softmax of logits 12 on the true class, smoothed (sigma 1.5 voxels) and with N(0, 0.3) noise, for
    ellipsoids of labels 1..K-1 of several sizes."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int64)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for k in range(1, classes):
        c = [int(rng.integers(s // 8, s - s // 8)) for s in shape]
        r = int(rng.integers(3, max(4, min(shape) // 3)))
        labels[((zz - c[0]) * 2) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < r * r] = k
    from scipy import ndimage

    logits = np.zeros((classes, *shape), np.float32)
    for k in range(classes):  # smoothed: uncertain at the boundaries, as a network is
        logits[k] = ndimage.gaussian_filter(12.0 * (labels == k).astype(np.float32), 1.5)
        logits[k] += rng.normal(0, 0.3, shape).astype(np.float32)
    logits -= logits.max(0, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(0, keepdims=True)
    return logits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[60, 256, 256], metavar=("Z", "Y", "X"))
    ap.add_argument("--classes", type=int, default=14)
    ap.add_argument("--out", type=Path, default=None, help="write the record as JSON here")
    args = ap.parse_args()
    probs = probabilities(tuple(args.shape), args.classes)
    record = {"shape_zyx": args.shape, "classes": args.classes, "machine": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "load_before": os.getloadavg()[0], "formats": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, quantize in (("float16", False), ("uint8", True)):
            path = Path(tmp) / f"{name}.npz"
            t0 = time.perf_counter()
            save_probabilities(probs, path, quantize=quantize)
            write_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            back, _ = load_probabilities(path)
            read_s = time.perf_counter() - t0
            record["formats"][name] = {"bytes": path.stat().st_size, "write_s": round(write_s, 3),
                                       "read_s": round(read_s, 3),
                                       "max_abs_error": float(np.abs(back - probs).max()),
                                       "argmax_changed_voxels": int((back.argmax(0) != probs.argmax(0)).sum())}
    record["load_after"] = os.getloadavg()[0]
    for name, r in record["formats"].items():
        print(f"{name:8s} {r['bytes'] / 1e6:8.1f} MB  write {r['write_s']:6.2f} s  read {r['read_s']:5.2f} s  "
              f"max error {r['max_abs_error']:.5f}  argmax changed {r['argmax_changed_voxels']} voxels")
    print(f"load average before/after: {record['load_before']:.2f} / {record['load_after']:.2f}")
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
