"""One `autoseg train` under a time budget on a machine that gets busy for a while: does it still end on
time, use its whole budget and finish its learning-rate schedule?

    autoseg plan ../shared/data/Dataset102_Hippocampus --workdir /tmp/hippo --time-budget 20m
    python benchmarks/busy_machine.py --workdir /tmp/hippo -c 3d_fullres --fold 0 --start 180 --stop 480
    python benchmarks/busy_machine.py --workdir /tmp/hippo_quiet -c 3d_fullres --fold 0 --no-competitor

The competitor is a CPU-bound process that runs U-Net training steps with torch's default threads
(benchmarks/shared_machine.py's step), started ``--start`` seconds after the training and killed at
``--stop``. Prints and writes (``--out``) the training's wall time against its budget, the share of the
budget it used, iterations, the final learning rate and the final validation Dice.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    from benchmarks.shared_machine import STEP

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("-c", "--configuration", default="3d_fullres")
    ap.add_argument("--fold", default="0")
    ap.add_argument("--start", type=float, default=180.0, help="seconds after the start the competitor begins")
    ap.add_argument("--stop", type=float, default=480.0, help="seconds after the start the competitor is killed")
    ap.add_argument("--no-competitor", action="store_true", help="the quiet reference run")
    ap.add_argument("--autoseg", default=str(Path(sys.executable).parent / "autoseg"))
    ap.add_argument("--out", default=None, help="JSON result")
    args = ap.parse_args()

    cmd = [args.autoseg, "train", "--workdir", args.workdir, "-c", args.configuration, "--fold", args.fold,
           "--no-progress"]
    log_path = Path(args.workdir) / f"busy_machine_{args.configuration}_{args.fold}.log"
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        train = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        comp, started, stopped = None, None, None
        while train.poll() is None:
            now = time.monotonic() - t0
            if not args.no_competitor and comp is None and started is None and now >= args.start:
                env = {**os.environ, "PYTHONPATH": str(REPO)}
                comp = subprocess.Popen([sys.executable, "-c", STEP, "0", "100000", "compete"], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                started = now
            if comp is not None and now >= args.stop:
                comp.kill()
                comp.wait()
                comp, stopped = None, now
            time.sleep(1.0)
        if comp is not None:
            comp.kill()
            comp.wait()
            stopped = time.monotonic() - t0
    wall = time.monotonic() - t0

    from autoseg.model.checkpoint import load_checkpoint
    from autoseg.store import RunStore

    store = RunStore(args.workdir)
    settings = store.train_settings(args.configuration, args.fold)
    final = load_checkpoint(store.wd.checkpoint(args.configuration, args.fold, "final"))
    state = final["state"]
    summary = store.fold_summary(args.configuration, args.fold)
    budget = settings.time_budget_s
    result = {
        "command": " ".join(cmd), "exit_code": train.returncode, "budget_s": budget, "wall_s": round(wall, 1),
        "wall_over_budget": round(wall / budget, 4) if budget else None,
        "training_clock_s": round(float(state["elapsed_s"]), 1),
        "iterations": int(state.get("iterations_done", 0)), "epochs": int(state["epoch"]),
        "final_lr": state["log"][-1]["lr"] if state["log"] else None,
        "last_elapsed_fraction": state["log"][-1].get("elapsed_fraction") if state["log"] else None,
        "competitor_s": None if args.no_competitor else [started, stopped],
        "foreground_dice": summary.foreground_dice if summary else None,
        "dice_per_class": {k: v.get("dice") for k, v in summary.per_class.items()} if summary else None,
        "seconds_per_iteration_per_epoch": [r.get("seconds_per_iteration") for r in state["log"]],
        "log": str(log_path),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0 if train.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
