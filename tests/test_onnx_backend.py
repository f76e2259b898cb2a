"""ONNX export and the onnxruntime backend: the same sliding window, the same segmentations as torch."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.cli import main
from autoseg.data.image_io import read_label
from autoseg.errors import AutosegError
from autoseg.inference.predictor import Predictor
from autoseg.model.onnx_backend import OnnxTileNetwork
from autoseg.model.sliding_window import predict_sliding_window
from autoseg.store import load_plans
from tests.synthetic import make_synthetic_dataset

TRAIN = ["--epochs", "1", "--iterations-per-epoch", "2", "--validation-iterations", "1", "--precision", "fp32",
         "--num-workers", "0", "--no-progress"]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the foreground labels present in either (1.0 when neither has any)."""
    labels = sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0})
    if not labels:
        return 1.0
    return float(np.mean([2 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k)) for k in labels]))


def _trained(root: Path, name: str, configuration: str, **dataset) -> tuple[Path, Path, Path]:
    """(run, dataset, model.zip with ONNX) of a tiny fold-0 training of ``configuration``."""
    ds = make_synthetic_dataset(root / name, with_test_cases=2, **dataset)
    run = root / "run"
    assert main(["plan", str(ds), "--workdir", str(run), "--no-progress", "--num-workers", "1", "--device", "cpu",
                 "--cpu-gflops", "100"]) == 0
    assert main(["train", "--workdir", str(run), "-c", configuration, "--fold", "0", *TRAIN]) == 0
    assert main(["find-best", "--workdir", str(run), "-c", configuration, "--folds", "0", "--no-progress"]) == 0
    model = root / "model.zip"
    assert main(["export", "--workdir", str(run), "-o", str(model), "--onnx", "--no-progress"]) == 0
    return run, ds, model


def _compare_backends(model: Path, inputs: Path, tmp: Path, ending: str) -> None:
    outs = {}
    for backend in ("torch", "onnxruntime"):
        outs[backend] = tmp / backend
        assert main(["predict", "--model", str(model), "-i", str(inputs), "-o", str(outs[backend]), "--backend",
                     backend, "--no-progress", "--num-workers", "1"]) == 0
    files = sorted(p.name for p in outs["torch"].glob(f"*{ending}"))
    assert len(files) == 2
    for name in files:
        a, _ = read_label(outs["torch"] / name)
        b, _ = read_label(outs["onnxruntime"] / name)
        assert a.shape == b.shape
        assert _dice(a, b) >= 0.999, name
        # a tiny, barely trained network has near-ties between classes, yet no voxel flipped here
        assert np.array_equal(a, b), f"{name}: {int(np.sum(a != b))} voxel(s) differ"
    info = json.loads((outs["onnxruntime"] / "prediction_info.json").read_text())
    assert info["backend"] == "onnxruntime" and info["precision"] and info["device"] == "cpu"


def test_3d_onnx_export_and_onnxruntime_predict_like_torch(tmp_path):
    run, ds, model = _trained(tmp_path, "Dataset041_Onnx3d", "3d_fullres", n_cases=5, shape=(10, 16, 16),
                              spacing_zyx=(2.0, 1.0, 1.0))
    with zipfile.ZipFile(model) as z:
        manifest = json.loads(z.read("autoseg_model.json"))
        onnx_bytes = z.read("onnx/3d_fullres/fold_0.onnx")
    assert manifest["onnx_opset"] >= 17 and manifest["networks"][0]["onnx"] == "onnx/3d_fullres/fold_0.onnx"
    contract = manifest["inference"]["3d_fullres"]
    assert contract["input"]["name"] == "tiles" and contract["sliding_window"]["step_size"] == 0.5
    # the batch and every spatial axis are dynamic: twice the patch runs too
    cfg = load_plans(run).configuration("3d_fullres")
    shape = [d for d in OnnxTileNetwork(onnx_bytes, threads=1).session.get_inputs()[0].shape]
    assert isinstance(shape[0], str) and all(isinstance(d, str) for d in shape[2:])
    net = OnnxTileNetwork(onnx_bytes, threads=1)
    double = net(torch.zeros(3, cfg.network.in_channels, *[2 * p for p in cfg.patch_size]))
    assert tuple(double.shape) == (3, cfg.network.num_classes, *[2 * p for p in cfg.patch_size])
    _compare_backends(model, ds / "imagesTs", tmp_path / "preds", ".nii.gz")

    # a work folder with --backend onnxruntime exports in memory: the same networks, the same result
    wd_out = tmp_path / "wd_ort"
    assert main(["predict", "--workdir", str(run), "-i", str(ds / "imagesTs"), "-o", str(wd_out), "--backend",
                 "onnxruntime", "--no-progress"]) == 0
    for p in (tmp_path / "preds" / "onnxruntime").glob("*.nii.gz"):
        assert np.array_equal(read_label(p)[0], read_label(wd_out / p.name)[0])
    # auto (the default): ONNX Runtime for fp32 networks on the CPU, torch for bf16 (and on CUDA)
    assert Predictor(model, device="cpu").backends == {"3d_fullres": "onnxruntime"}
    assert Predictor(model, device="cpu", precision="bf16").backends == {"3d_fullres": "torch"}
    assert Predictor(model, device="cpu", backend="torch").backend_used == "torch"
    with pytest.raises(AutosegError, match="CPU only"):
        Predictor(model, backend="onnxruntime", device="cuda")
    with pytest.raises(AutosegError, match="fp32 only"):
        Predictor(model, backend="onnxruntime", precision="bf16")


def test_2d_onnx_export_and_onnxruntime_predict_like_torch(tmp_path):
    _, ds, model = _trained(tmp_path, "Dataset042_Onnx2d", "2d", ndim=2, n_cases=5, shape=(32, 32),
                            file_ending=".png")
    _compare_backends(model, ds / "imagesTs", tmp_path / "preds", ".png")


def test_sliding_window_takes_any_callable_on_a_batch_of_tiles():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 3, 3, padding=1).eval()
    data = np.random.default_rng(0).normal(size=(2, 9, 13, 11)).astype(np.float32)
    calls = []

    def as_callable(tiles: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(tiles.shape))
        return net(tiles)

    kwargs = dict(step_size=0.5, mirror_axes=(0, 1, 2))
    ref = predict_sliding_window(net, data, (6, 8, 8), 3, **kwargs)
    got = predict_sliding_window(as_callable, data, (6, 8, 8), 3, **kwargs)
    assert calls and all(s[1:] == (2, 6, 8, 8) for s in calls)
    assert torch.equal(ref, got)

