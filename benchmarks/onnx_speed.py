"""ONNX Runtime vs torch on the CPU: seconds per case and peak memory of `autoseg predict --model`.

For each dataset (a folder and the configuration to time) the script plans it into a scratch folder,
trains fold 0 for one epoch of a few iterations (the weights' quality does not change the speed), runs
`find-best --folds 0`, exports the model with `--onnx`, links the first N training images into a
folder of cases (imagesTr: the speed of a forward pass does not depend on whether a case was seen),
then times `autoseg predict --model model.zip --backend torch` and `--backend onnxruntime` on them,
alternating the backends for ``--repeats`` rounds. It also compares the two backends' segmentations
(Dice and identical voxels).

    .venv/bin/python benchmarks/onnx_speed.py \\
        --dataset /work/shared/data/Dataset102_Hippocampus:3d_fullres \\
        --dataset /work/shared/data/Dataset101_ISBI2012EM:2d \\
        --scratch /work/bench/onnx_speed --cases 20 --out docs/benchmarks/onnx_speed.md

Trainings run in fp32, so both backends compute in fp32 (a CPU with native bf16 would otherwise
predict in bf16 with torch). Writes the table to --out and everything measured next to it as .json;
the load average before and after says whether other jobs shared the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_common as bc  # noqa: E402

# a third backend for --openvino-python: autoseg's onnxruntime backend with the OpenVINO execution provider first
# (a patch inside this benchmark only: autoseg itself always uses the CPU execution provider)
OPENVINO = ("import sys\nimport autoseg.model.onnx_backend as ob\n"
            "ob.OnnxTileNetwork.__init__.__kwdefaults__['providers'] = "
            "('OpenVINOExecutionProvider', 'CPUExecutionProvider')\n"
            "from autoseg.cli import main\nsys.exit(main(sys.argv[1:]))")
TRAIN = ["--epochs", "1", "--iterations-per-epoch", "3", "--validation-iterations", "1", "--precision", "fp32",
         "--no-progress"]
BACKENDS = ("torch", "onnxruntime")


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _autoseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoseg", *args]


def _env(scratch: Path) -> dict[str, str]:
    # this checkout's autoseg; the CPU speed figure of planning kept in the scratch folder
    return {**os.environ, "PYTHONPATH": str(HERE.parent), "AUTOSEG_CACHE_DIR": str(scratch / "cache")}


def prepare(dataset: Path, configuration: str, scratch: Path, cases: int) -> tuple[Path, Path, dict[str, Any]]:
    """(model.zip, folder of cases, seconds of each preparation step); steps already done are kept."""
    run, model, inputs = scratch / "run", scratch / "model.zip", scratch / "cases"
    env, steps = _env(scratch), {}
    commands = [("plan", _autoseg("plan", str(dataset), "--workdir", str(run), "--device", "cpu", "--no-progress")),
                ("train", _autoseg("train", "--workdir", str(run), "-c", configuration, "--fold", "0", *TRAIN)),
                ("find-best", _autoseg("find-best", "--workdir", str(run), "-c", configuration, "--folds", "0",
                                       "--no-progress")),
                ("export", _autoseg("export", "--workdir", str(run), "-o", str(model), "--onnx", "--no-progress"))]
    done = {"plan": (run / "plans.json").exists(), "train": (run / "results" / configuration / "fold_0" /
                                                            "checkpoint_final.pt").exists(),
            "find-best": (run / "results" / "selection.json").exists(), "export": model.exists()}
    for name, cmd in commands:
        if done[name]:
            continue
        stats = bc.run_monitored(cmd, scratch / "logs" / f"{name}.log", env=env, label=name)
        bc.require_success(stats, f"autoseg {name} of {dataset.name}")
        steps[name] = stats.seconds
    inputs.mkdir(parents=True, exist_ok=True)
    files = sorted((dataset / "imagesTr").iterdir())
    ids = sorted({f.name.rsplit("_", 1)[0] for f in files})[:cases]
    for f in files:
        if f.name.rsplit("_", 1)[0] in ids and not (inputs / f.name).exists():
            (inputs / f.name).symlink_to(f)
    return model, inputs, steps


def time_backend(model: Path, inputs: Path, out: Path, backend: str, scratch: Path, label: str,
                 openvino_python: str | None = None) -> dict[str, Any]:
    if out.exists():
        import shutil

        shutil.rmtree(out)
    args = ["predict", "--model", str(model), "-i", str(inputs), "-o", str(out), "--no-progress"]
    if backend == "openvino":
        cmd = [str(openvino_python), "-c", OPENVINO, *args, "--backend", "onnxruntime"]
    else:
        cmd = _autoseg(*args, "--backend", backend)
    stats = bc.run_monitored(cmd, scratch / "logs" / f"predict_{label}.log", env=_env(scratch), label=label)
    bc.require_success(stats, f"autoseg predict --backend {backend}")
    info = json.loads((out / "prediction_info.json").read_text())
    per_case = list(info["seconds_per_case"].values())
    return {"backend": backend, "wall_s": stats.seconds, "predict_s": info["total_seconds"],
            "s_per_case": round(info["total_seconds"] / len(per_case), 3),
            "median_case_s": round(float(np.median(per_case)), 3), "peak_rss_mb": stats.peak_rss_mb,
            "peak_pss_mb": stats.peak_pss_mb, "cases": len(per_case), "precision": info["precision"],
            "num_workers": info["num_workers"]}


NETWORK = r'''
import json, sys, time
import numpy as np, torch
from autoseg.hardware import usable_cpu_cores
from autoseg.model.model_zip_reader import open_model_zip
from autoseg.model.network import build_network
from autoseg.model.onnx_backend import OnnxTileNetwork
path, name, backend, batch, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
mz = open_model_zip(path)
cfg, fold = mz.plans.configuration(name), mz.manifest.folds[0]
if backend == "torch":
    net = build_network(cfg.network)
    net.load_state_dict(mz.weights(name, fold, net))
    net.set_deep_supervision(False)
    net.eval()
else:
    net = OnnxTileNetwork(mz.onnx(name, fold), threads=usable_cpu_cores())
tiles = torch.randn(batch, cfg.network.in_channels, *cfg.patch_size, generator=torch.Generator().manual_seed(0))
seconds = []
with torch.inference_mode():
    logits = net(tiles)  # warm-up
    for _ in range(calls):
        t0 = time.perf_counter()
        net(tiles)
        seconds.append(time.perf_counter() - t0)
np.save(sys.argv[6], logits.numpy())
print(json.dumps({"median_s": float(np.median(seconds))}))
'''


def time_networks(model: Path, scratch: Path, rounds: int, calls: int = 5) -> dict[str, Any]:
    """The networks alone: fold 0 of each configuration on a batch of 1 and of 4 patch-size tiles (the sliding
    window's batch), each backend in its own process as `autoseg` runs it (OMP_WAIT_POLICY=PASSIVE), torch and
    ONNX Runtime processes alternating for ``rounds`` rounds; per round the median of ``calls`` timed calls
    after a warm-up. Reports the median over the rounds and the largest logit difference."""
    import subprocess

    from autoseg.model.model_zip_reader import open_model_zip

    mz = open_model_zip(model)
    env = {**_env(scratch), "OMP_WAIT_POLICY": "PASSIVE"}
    out: dict[str, Any] = {}
    for name in mz.manifest.stages:
        cfg = mz.plans.configuration(name)
        for batch in (1, 4):
            seconds: dict[str, list[float]] = {b: [] for b in BACKENDS}
            for _ in range(rounds):
                for backend in BACKENDS:
                    done = subprocess.run([sys.executable, "-c", NETWORK, str(model), name, backend, str(batch),
                                           str(calls), str(scratch / f"logits_{backend}.npy")], env=env,
                                          capture_output=True, text=True, check=True)
                    seconds[backend].append(json.loads(done.stdout.strip().splitlines()[-1])["median_s"])
            diff = float(np.abs(np.load(scratch / "logits_torch.npy") - np.load(scratch / "logits_onnxruntime.npy")).max())
            out[f"{name} batch {batch}"] = {
                "batch": [batch, cfg.network.in_channels, *cfg.patch_size], "rounds": rounds, "calls": calls,
                "median_s": {b: round(float(np.median(v)), 4) for b, v in seconds.items()},
                "per_round_s": {b: [round(x, 4) for x in v] for b, v in seconds.items()},
                "max_abs_logit_difference": diff}
    return out


def compare(a: Path, b: Path, ending: str) -> dict[str, Any]:
    from autoseg.data.image_io import read_label

    dices, identical, differing = [], 0, 0
    for p in sorted(a.glob(f"*{ending}")):
        x, _ = read_label(p)
        y, _ = read_label(b / p.name)
        labels = sorted((set(np.unique(x).tolist()) | set(np.unique(y).tolist())) - {0})
        d = [2 * np.sum((x == k) & (y == k)) / (np.sum(x == k) + np.sum(y == k)) for k in labels]
        dices.append(float(np.mean(d)) if d else 1.0)
        identical += int(np.array_equal(x, y))
        differing += int(np.sum(x != y))
    return {"cases": len(dices), "min_dice": round(min(dices), 6), "mean_dice": round(float(np.mean(dices)), 6),
            "identical_cases": identical, "differing_voxels": differing}


def render(result: dict[str, Any]) -> str:
    lines = ["# ONNX Runtime vs torch on the CPU (`autoseg predict --model`)", "",
             f"Measured {result['date']} with `{result['command']}`.", "",
             f"Machine: {result['machine']['cpu_model']}, {result['machine']['cpu_cores_usable']} usable cores, "
             f"{result['machine']['ram_gb']} GB RAM; torch {result['versions']['torch']}, onnxruntime "
             f"{result['versions']['onnxruntime']}. Load average (1, 5, 15 min) before: "
             f"{result['load_before']}, after: {result['load_after']} (the figure after includes this benchmark's "
             f"own processes, about one per busy core)"
             + (" — other jobs were running on the machine when it started, so absolute times are noisy; the "
                "backends were run alternately to share that noise." if result['load_before'][0]
                > 0.5 * result['machine']['cpu_cores_usable'] else "; the backends were run alternately."), "",
             "Each case: preprocessing, sliding window (step 0.5, Gaussian weights, every mirroring), export to "
             "the original grid, postprocessing, writing. Both backends run fp32 on every usable core; the "
             "cases are the first N of imagesTr (the weights' quality does not change the speed). s/case = "
             "predict_cases' total seconds / cases (model loading excluded); wall = the whole command, process "
             "start and model loading included; peak RSS of the process.", "",
             *([f"The networks alone were measured {result['networks_measured']}, load average before "
                f"{result['networks_load_before']}, after {result['networks_load_after']}.", ""]
               if "networks_measured" in result else []),
             "| dataset | configuration | backend | round | cases | s/case | median s/case | wall s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for ds in result["datasets"]:
        for r in ds["runs"]:
            lines.append(f"| {ds['name']} | {ds['configuration']} | {r['backend']} | {r['round']} | {r['cases']} | "
                         f"{r['s_per_case']:.3f} | {r['median_case_s']:.3f} | {r['wall_s']:.1f} | "
                         f"{r['peak_rss_mb']:.0f} |")
    lines += ["", "| dataset | backend vs torch | torch s/case (best) | its s/case (best) | speed-up | min Dice | "
                  "identical cases | differing voxels |", "|---|---|---|---|---|---|---|---|"]
    for ds in result["datasets"]:
        best = {r["backend"]: min(q["s_per_case"] for q in ds["runs"] if q["backend"] == r["backend"])
                for r in ds["runs"]}
        for backend, c in ds["agreement_by_backend"].items():
            lines.append(f"| {ds['name']} | {backend} | {best['torch']:.3f} | {best[backend]:.3f} | "
                         f"{best['torch'] / best[backend]:.2f}x | {c['min_dice']:.6f} | "
                         f"{c['identical_cases']}/{c['cases']} | {c['differing_voxels']} |")
    lines += ["", "The networks alone (fold 0; a batch of 1 and of 4 patch-size tiles; each backend in its own "
                  "process with OMP_WAIT_POLICY=PASSIVE as `autoseg` sets it, torch and ONNX Runtime processes "
                  "alternating; median seconds per call over the rounds):", "",
              "| dataset | network | batch | torch s | onnxruntime s | speed-up | max logit difference |",
              "|---|---|---|---|---|---|---|"]
    for ds in result["datasets"]:
        for name, n in (ds.get("networks") or {}).items():
            lines.append(f"| {ds['name']} | {name} | {'x'.join(map(str, n['batch']))} | {n['median_s']['torch']:.4f} | "
                         f"{n['median_s']['onnxruntime']:.4f} | "
                         f"{n['median_s']['torch'] / n['median_s']['onnxruntime']:.2f}x | "
                         f"{n['max_abs_logit_difference']:.1e} |")
    lines += ["", f"OpenVINO execution provider: {result['openvino']}", "",
              "What autoseg does with this: `autoseg predict --backend auto` (the default) runs networks that run on "
              "the CPU in fp32 in ONNX Runtime (CPUExecutionProvider) when onnx and onnxruntime are installed, since "
              "it was faster per case on both datasets with segmentations equal to torch's up to a few voxels at "
              "near-ties; `--backend torch` gives torch's exactly (docs/prediction.md §12). The OpenVINO execution "
              "provider is not used by autoseg (not a dependency; it replaces the onnxruntime package).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", action="append", required=True, metavar="FOLDER:CONFIGURATION")
    ap.add_argument("--scratch", required=True, help="work folders, models and logs (never inside the repository)")
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2, help="rounds of (torch, onnxruntime)")
    ap.add_argument("--openvino-python", default=None, metavar="PYTHON",
                    help="an interpreter with onnxruntime-openvino (and autoseg's other dependencies): also time the "
                         "OpenVINO execution provider")
    ap.add_argument("--openvino", default="not tried", help="what to report about the OpenVINO execution provider")
    ap.add_argument("--network-rounds", type=int, default=3,
                    help="alternating processes per backend when timing the networks alone")
    ap.add_argument("--reuse-predict", action="store_true",
                    help="keep the predict timings of the JSON beside --out and measure only the networks alone")
    ap.add_argument("--render-only", action="store_true", help="write the Markdown again from the JSON beside --out")
    ap.add_argument("--out", required=True, help="the Markdown table; the JSON goes beside it")
    args = ap.parse_args(argv)
    if args.render_only:
        Path(args.out).write_text(render(json.loads(Path(args.out).with_suffix(".json").read_text())), encoding="utf-8")
        return 0
    scratch_root = Path(args.scratch).resolve()
    if HERE.parent in scratch_root.parents or scratch_root == HERE.parent:
        raise SystemExit(f"--scratch {scratch_root} is inside the repository; choose a folder outside it")
    import onnxruntime
    import torch

    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "command": "python benchmarks/onnx_speed.py " + " ".join(argv or sys.argv[1:]),
                              "machine": bc.machine_info(), "load_before": load_average(),
                              "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
                              "openvino": args.openvino, "datasets": []}
    previous = {}
    if args.reuse_predict:
        before = json.loads(Path(args.out).with_suffix(".json").read_text())
        previous = {d["name"]: d for d in before["datasets"]}
        result.update({k: before[k] for k in ("date", "command", "load_before", "openvino")})
        result["networks_measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        result["networks_load_before"] = load_average()
    for spec in args.dataset:
        folder, _, configuration = spec.rpartition(":")
        dataset = bc.check_dataset(folder)
        scratch = scratch_root / dataset.name
        print(f"== {dataset.name} ({configuration})", flush=True)
        model, inputs, steps = prepare(dataset, configuration, scratch, args.cases)
        if dataset.name in previous:
            result["datasets"].append({**previous[dataset.name], "networks": time_networks(model, scratch, args.network_rounds)})
            continue
        runs = []
        backends = [*BACKENDS, *(["openvino"] if args.openvino_python else [])]
        for round_ in range(1, args.repeats + 1):
            for backend in backends:
                r = time_backend(model, inputs, scratch / f"out_{backend}", backend, scratch,
                                 f"{backend}_{round_}", args.openvino_python)
                runs.append({**r, "round": round_})
                print(f"  {backend} round {round_}: {r['s_per_case']:.3f} s/case, wall {r['wall_s']:.1f} s, "
                      f"peak {r['peak_rss_mb']:.0f} MB", flush=True)
        ending = json.loads((dataset / "dataset.json").read_text())["file_ending"]
        agreement = {b: compare(scratch / "out_torch", scratch / f"out_{b}", ending) for b in backends[1:]}
        result["datasets"].append({"name": dataset.name, "configuration": configuration, "prepare_s": steps,
                                   "runs": runs, "agreement": agreement["onnxruntime"],
                                   "agreement_by_backend": agreement,
                                   "networks": time_networks(model, scratch, args.network_rounds)})
    if args.reuse_predict:
        result["load_after"] = before["load_after"]
        result["networks_load_after"] = load_average()
    else:
        result["load_after"] = load_average()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(result), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
