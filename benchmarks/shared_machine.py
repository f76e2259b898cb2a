"""How much does a competing CPU-bound process slow an autoseg training step, per thread setting?

For each setting (torch threads, OpenMP wait policy) a child process times training steps of a
representative 3D U-Net (the Hippocampus-sized CPU plan: 4 stages 16-128 features, patch 40x48x40,
batch 2, deep supervision, SGD), first alone, then while a competitor runs: a second process doing
the same training steps with torch's defaults (a fold beside another fold, the common case).

    python benchmarks/shared_machine.py --seconds 20 --out docs/benchmarks/shared_machine.md

Run it on an otherwise idle machine (it starts its own competitor). torch's CPU wheels use GNU
OpenMP (libgomp): its idle threads spin before they sleep, which is what makes two such processes
on few cores slow each other far more than 2x; OMP_WAIT_POLICY=PASSIVE (and GOMP_SPINCOUNT=0) make
them sleep at once. KMP_BLOCKTIME is Intel OpenMP's knob and does nothing with libgomp.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STEP = r'''
import json, os, sys, time, statistics
import torch
threads = int(sys.argv[1]); seconds = float(sys.argv[2]); mode = sys.argv[3]
if threads > 0:
    torch.set_num_threads(threads)
from autoseg.schemas import NetworkSpec
from autoseg.model.network import build_network
from autoseg.training.losses import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights
n = 4
spec = NetworkSpec(dims=3, in_channels=1, num_classes=3, features_per_stage=[16, 32, 64, 128],
                   kernel_sizes=[[3, 3, 3]] * n, strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
                   n_conv_per_stage_encoder=[2] * n, n_conv_per_stage_decoder=[2] * (n - 1))
torch.manual_seed(0)
net = build_network(spec)
opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
loss = DeepSupervisionLoss(DiceCELoss(batch_dice=True), deep_supervision_weights(n - 1))
x = torch.randn(2, 1, 40, 48, 40)
targets = [torch.randint(0, 3, (2, 1, *o.shape[2:])) for o in net(x)]
def step():
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    out = net(x)
    loss([o.float() for o in out], targets).backward()
    opt.step()
    return time.perf_counter() - t0
for _ in range(3):
    step()
times = []
end = time.monotonic() + seconds
while time.monotonic() < end or (mode == "measure" and len(times) < 5):
    times.append(step())
    if mode == "compete":
        continue
print(json.dumps({"median_s": statistics.median(times), "n": len(times)}))
'''

SETTINGS = [
    ("torch default threads, libgomp default (active spin)", 0, {}),
    ("torch threads 1", 1, {}),
    ("OMP_WAIT_POLICY=PASSIVE, GOMP_SPINCOUNT=0", 0, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}),
    ("torch threads 1 + OMP_WAIT_POLICY=PASSIVE", 1, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}),
]


def _measure(threads: int, env_extra: dict, seconds: float, competitor: bool) -> dict:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    comp = None
    if competitor:
        comp_env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        comp_env["PYTHONPATH"] = env["PYTHONPATH"]
        comp = subprocess.Popen([sys.executable, "-c", STEP, "0", str(seconds + 30), "compete"], env=comp_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(8)  # the competitor is past its imports and warm-up
    try:
        out = subprocess.run([sys.executable, "-c", STEP, str(threads), str(seconds), "measure"], env=env,
                             capture_output=True, text=True, check=True).stdout
    finally:
        if comp is not None:
            comp.kill()
            comp.wait()
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per measurement")
    ap.add_argument("--out", default=None, help="markdown report (a .json beside it)")
    args = ap.parse_args()
    rows = []
    for name, threads, env_extra in SETTINGS:
        alone = _measure(threads, env_extra, args.seconds, competitor=False)
        loaded = _measure(threads, env_extra, args.seconds, competitor=True)
        rows.append({"setting": name, "threads": threads, "env": env_extra, "alone_s": alone["median_s"],
                     "with_competitor_s": loaded["median_s"], "slowdown": loaded["median_s"] / alone["median_s"],
                     "iterations": [alone["n"], loaded["n"]]})
        print(f"{name:50s} alone {alone['median_s']:.3f} s/it, with a competitor {loaded['median_s']:.3f} s/it "
              f"({loaded['median_s'] / alone['median_s']:.2f}x)", flush=True)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps({"cpu_count": os.cpu_count(), "rows": rows}, indent=2))
        lines = ["| setting | alone, s/iteration | beside a competitor | slowdown |", "|---|---|---|---|"]
        lines += [f"| {r['setting']} | {r['alone_s']:.3f} | {r['with_competitor_s']:.3f} | {r['slowdown']:.2f}x |"
                  for r in rows]
        out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
