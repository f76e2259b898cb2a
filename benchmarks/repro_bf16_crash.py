"""Try to reproduce the segfault in ``loss.backward()`` under bf16 autocast on the CPU.

The reported set-up (cine MRI, 10 mm slices, 1.56 mm in-plane): plan ``3d_fullres``, patch 6x160x128,
batch 2, six stages 16 -> 256 features, kernels [1,3,3] in the first two stages, no pooling along z,
deep supervision. This script builds that network from a NetworkSpec (the planner's own topology
rules give exactly those kernels and strides), then runs SGD training steps (forward under autocast,
deep-supervision Dice+CE loss, backward, clip, step) in a loop in a *child process* and reports how the
child ended: normally, by an exception, or killed by a signal (SIGSEGV = 11).

    PYTHONPATH=$PWD python benchmarks/repro_bf16_crash.py --runs 3 --iterations 30
    PYTHONPATH=$PWD python benchmarks/repro_bf16_crash.py --runs 1 --iterations 5 --onednn-verbose

With ``--onednn-verbose`` the child runs with ``ONEDNN_VERBOSE=1`` (set before torch is imported in
the child) and its output goes to a log file; after a crash the last oneDNN lines, i.e. the primitive
being created or executed when the process died, are printed.

Each child is a fresh interpreter (``subprocess``): oneDNN reads ONEDNN_VERBOSE once, at its first use,
and a crash in the child leaves this process alive to report it.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SPACING_ZYX = (10.0, 1.5625, 1.5625)
PATCH = (6, 160, 128)


def network_spec(num_classes: int, base: int, max_features: int):
    from autoseg.planning.topology import build_network_spec, pool_and_conv_props

    kernels, strides, patch, _ = pool_and_conv_props(SPACING_ZYX, PATCH)
    assert list(patch) == list(PATCH), patch
    return build_network_spec(3, 1, num_classes, kernels, strides, base, max_features)


def child(args: argparse.Namespace) -> int:
    """The training loop (runs in the child interpreter); prints one JSON line per reported event."""
    import torch

    from autoseg.training.augmentation import deep_supervision_scales
    from autoseg.training.losses import (
        DeepSupervisionLoss,
        DiceCELoss,
        deep_supervision_weights,
    )
    from autoseg.model.network import build_network

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = network_spec(args.classes, args.base_features, args.max_features)
    net = build_network(spec)
    n_out = len(spec.features_per_stage) - 1
    scales = deep_supervision_scales(spec.strides, n_out)
    loss_fn = DeepSupervisionLoss(DiceCELoss(batch_dice=True), deep_supervision_weights(n_out))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    patch = list(args.patch)
    x = torch.randn(args.batch, 1, *patch)
    seg = torch.randint(0, args.classes, (args.batch, 1, *patch))
    targets = [torch.nn.functional.interpolate(seg.float(), size=[max(1, round(p * s)) for p, s in zip(patch, sc)],
                                               mode="nearest").long() for sc in scales]
    print(json.dumps({"event": "start", "pid": os.getpid(), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "spec": spec.__dict__}), flush=True)
    t0 = time.perf_counter()

    def step(it: int, precision: str, what: str = "step") -> None:
        nonlocal x
        if args.new_batch:
            x = torch.randn(args.batch, 1, *patch)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = net(x)
        loss = loss_fn([o.float() for o in out], targets)
        print(json.dumps({"event": "backward", "iteration": it, "precision": precision}), flush=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        opt.step()
        print(json.dumps({"event": what, "iteration": it, "precision": precision, "loss": round(float(loss), 4),
                          "elapsed_s": round(time.perf_counter() - t0, 2)}), flush=True)

    if args.probe_first:  # what the old in-process probe did: fp32 then bf16 steps, weights restored after
        import copy

        model0, opt0 = copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())
        for precision in ("fp32", "bf16"):
            for k in range(4):
                step(k, precision, "probe")
        net.load_state_dict(model0)
        opt.load_state_dict(opt0)
    for it in range(args.iterations):
        step(it, args.precision)
    return 0


def describe(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by signal {-rc} ({signal.Signals(-rc).name})"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


def last_lines(path: Path, prefix: str, n: int) -> list[str]:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.startswith(prefix)]
    return lines[-n:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="child processes, one after the other")
    ap.add_argument("--iterations", type=int, default=20, help="training steps per child")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--patch", type=int, nargs=3, default=list(PATCH))
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--base-features", type=int, default=16)
    ap.add_argument("--max-features", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the child (0: torch's default)")
    ap.add_argument("--new-batch", action="store_true", help="fresh random input every step")
    ap.add_argument("--probe-first", action="store_true",
                    help="first 4 fp32 and 4 bf16 steps, then restore the weights (the old in-process probe)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per child")
    ap.add_argument("--onednn-verbose", action="store_true", help="ONEDNN_VERBOSE=1 in the child; log to a file")
    ap.add_argument("--log-dir", type=Path, default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)

    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="repro_bf16_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])
                   if a not in ("--onednn-verbose",)]
    results = []
    for run in range(args.runs):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        if args.onednn_verbose:
            env["ONEDNN_VERBOSE"] = "1"
        log_path = log_dir / f"run{run}.log"
        cmd = [sys.executable, __file__, *passthrough, "--child", "--seed", str(args.seed + run)]
        t0 = time.monotonic()
        with open(log_path, "w") as log:
            try:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False,
                                    timeout=args.timeout).returncode
            except subprocess.TimeoutExpired:
                rc = None
        wall = time.monotonic() - t0
        steps = last_lines(log_path, '{"event": "step"', 1)
        done = json.loads(steps[-1])["iteration"] + 1 if steps else 0
        outcome = "timeout" if rc is None else describe(rc)
        results.append({"run": run, "outcome": outcome, "rc": rc, "steps_done": done, "wall_s": round(wall, 1),
                        "log": str(log_path)})
        print(f"run {run}: {outcome} after {done}/{args.iterations} steps, {wall:.0f} s (log {log_path})",
              flush=True)
        if rc is not None and rc < 0:
            print("  last events:", *last_lines(log_path, '{"event"', 2), sep="\n    ")
            if args.onednn_verbose:
                print("  last oneDNN lines:", *last_lines(log_path, "onednn_verbose", 6), sep="\n    ")
    crashed = sum(1 for r in results if r["rc"] is not None and r["rc"] < 0)
    print(f"{crashed} of {len(results)} runs died by a signal ({args.precision}, {args.iterations} steps each, "
          f"batch {args.batch}, patch {args.patch})")
    print(json.dumps(results))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
