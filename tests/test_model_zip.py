"""autoseg export / predict --model: the round trip, no patient data in the zip, and hostile zips refused."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from autoseg.cli import main
from autoseg.model.model_zip import MANIFEST_JSON, sha256_hex
from autoseg.schemas import Decision, save_json
from autoseg.store import load_plans
from autoseg.workdir import Workdir
from tests.synthetic import case_id, make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["--epochs", "1", "--iterations-per-epoch", "2", "--validation-iterations", "1", "--precision", "fp32",
         "--num-workers", "0", "--no-progress"]
WEIGHTS = "weights/3d_fullres/fold_0.safetensors"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """A tiny 3D run (fold 0, find-best), its predictions of imagesTs, and model.zip exported from it."""
    root = tmp_path_factory.mktemp("model_zip")
    ds = make_synthetic_dataset(root / "Dataset031_Zip", n_cases=5, shape=(10, 16, 16), n_channels=2,
                                spacing_zyx=(2.0, 1.0, 1.0), with_test_cases=2)
    run = root / "run"
    assert main(["plan", str(ds), "--workdir", str(run), "--no-progress", "--num-workers", "1", "--device", "cpu",
                 "--cpu-gflops", "100"]) == 0
    # free text that names a training case and local paths: the export must scrub it
    plans = load_plans(run)
    leak = Decision("note", case_id(0), "test", f"looked at {case_id(0)} in {ds} and {Path.home()}/x",
                    {"path": str(run / "notes.txt")})
    cfg = plans.configurations["3d_fullres"]
    plans = replace(plans, hardware=replace(plans.hardware, cpu_speed_source=f"remembered in {run}/cache.json"),
                    configurations={**plans.configurations, "3d_fullres": replace(cfg, decisions=[*cfg.decisions, leak])})
    save_json(plans, Workdir(run).plans_json)
    assert main(["train", "--workdir", str(run), "-c", "3d_fullres", "--fold", "0", *TRAIN]) == 0
    assert main(["find-best", "--workdir", str(run), "--folds", "0", "--no-progress"]) == 0
    from_run = root / "from_run"
    assert main(["predict", "--workdir", str(run), "-i", str(ds / "imagesTs"), "-o", str(from_run),
                 "--no-progress"]) == 0
    model = root / "model.zip"
    assert main(["export", "--workdir", str(run), "-o", str(model), "--no-progress"]) == 0
    return {"root": root, "ds": ds, "run": run, "model": model, "from_run": from_run}


def test_round_trip_predicts_the_same_bytes_without_the_work_folder(exported, tmp_path, monkeypatch):
    run, ds = exported["run"], exported["ds"]
    moved = exported["root"] / "run_moved_away"
    shutil.move(str(run), str(moved))  # the zip alone must suffice
    try:
        inputs = tmp_path / "elsewhere" / "cases"
        shutil.copytree(ds / "imagesTs", inputs)
        monkeypatch.chdir(tmp_path / "elsewhere")
        assert main(["predict", "--model", str(exported["model"]), "-i", "cases", "-o", "preds", "--no-progress"]) == 0
    finally:
        shutil.move(str(moved), str(run))
    out, ref = tmp_path / "elsewhere" / "preds", exported["from_run"]
    names = sorted(p.name for p in ref.glob("*.nii.gz"))
    assert names == [f"{case_id(i)}.nii.gz" for i in (5, 6)]
    for name in names:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    info, ref_info = (json.loads((d / "prediction_info.json").read_text()) for d in (out, ref))
    assert info["workdir"] is None and info["model"] == str(exported["model"]) and info["model_id"]
    assert info["postprocessing"] == ref_info["postprocessing"] and info["folds"] == ref_info["folds"] == [0]
    assert info["backend"] == ref_info["backend"] == "onnxruntime"  # auto: fp32 on the CPU
    assert info["checkpoint"] == "final"


def test_the_zip_holds_no_case_id_and_no_local_path(exported):
    case_ids = [case_id(i) for i in range(7)]  # the training cases and the held-out ones
    local = [str(exported["root"]), str(Path.home())]
    with zipfile.ZipFile(exported["model"]) as z:
        names = z.namelist()
        assert sorted(names) == sorted([MANIFEST_JSON, "plans.json", "selection.json", "dataset.json", WEIGHTS])
        for name in names:
            assert not any(c in name for c in case_ids)
            data = z.read(name)
            if name.endswith(".json"):
                text = data.decode()
                assert not [c for c in case_ids if c in text], name
                assert not [p for p in local if p in text], name
            else:  # the tensors' names are the network's parameter names
                assert not [c for c in case_ids if c.encode() in data], name
        plans = json.loads(z.read("plans.json"))
        manifest = json.loads(z.read(MANIFEST_JSON))
    assert list(plans["configurations"]) == ["3d_fullres"] and plans["decisions"] == []
    assert plans["hardware"]["cpu_speed_source"] == ""
    assert plans["configurations"]["3d_fullres"]["decisions"][-1]["reason"].startswith("[removed by autoseg export")
    assert manifest["format_version"] == 1 and manifest["torch_version"] and manifest["autoseg_version"]
    assert manifest["members"][WEIGHTS]["sha256"] == sha256_hex(zipfile.ZipFile(exported["model"]).read(WEIGHTS))


# --------------------------------------------------------------------------- hostile zips

def _rebuild(src: Path, dst: Path, *, drop: tuple[str, ...] = (), members: dict | None = None,
             extra: list[tuple[zipfile.ZipInfo | str, bytes]] = (), manifest_edit=None) -> Path:
    """``src`` rewritten: ``drop`` left out, ``members`` replaced (name -> bytes, the manifest's hash
    updated so only the content check can catch it), ``extra`` entries appended as they are."""
    members = members or {}
    with zipfile.ZipFile(src) as z:
        content = {n: z.read(n) for n in z.namelist() if n not in drop}
    manifest = json.loads(content.pop(MANIFEST_JSON))
    for name, data in members.items():
        content[name] = data
        manifest["members"][name] = {"sha256": sha256_hex(data), "bytes": len(data)}
    if manifest_edit:
        manifest_edit(manifest)
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr(MANIFEST_JSON, json.dumps(manifest))
        for name, data in content.items():
            z.writestr(name, data)
        for info, data in extra:
            z.writestr(info, data)
    return dst


def _declare_size(path: Path, name: str, size: int) -> None:
    """Patch the central directory's uncompressed size of ``name`` (what a zip bomb or a liar declares)."""
    data = bytearray(path.read_bytes())
    i = 0
    while True:
        i = data.index(b"PK\x01\x02", i)
        n = struct.unpack_from("<H", data, i + 28)[0]
        if data[i + 46:i + 46 + n] == name.encode():
            struct.pack_into("<I", data, i + 24, size)
            break
        i += 4
    path.write_bytes(bytes(data))


class RunsCode:
    """Unpickling this runs a shell command: the marker file proves whether it ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _hostile(kind: str, src: Path, dst: Path, marker: Path) -> tuple[Path, str]:
    """(a hostile variant of the zip, the member its message must name)."""
    if kind == "parent":
        return _rebuild(src, dst, extra=[("../evil", b"x")]), "../evil"
    if kind == "absolute":
        return _rebuild(src, dst, extra=[(str(marker.parent / "evil_abs"), b"x")]), str(marker.parent / "evil_abs")
    if kind == "symlink":
        return _rebuild(src, dst, drop=(WEIGHTS,), extra=[(_symlink_info(WEIGHTS), b"/etc/passwd")]), WEIGHTS
    if kind == "duplicate":
        with pytest.warns(UserWarning, match="Duplicate name"):
            return _rebuild(src, dst, extra=[("plans.json", b"{}")]), "plans.json"
    if kind == "pickle_as_weights":
        return _rebuild(src, dst, members={WEIGHTS: pickle.dumps(RunsCode(marker))}), WEIGHTS
    if kind == "pickle_pt":
        pt = "weights/3d_fullres/fold_0.pt"
        return _rebuild(src, dst, drop=(WEIGHTS,), members={pt: pickle.dumps(RunsCode(marker))}), pt
    if kind == "oversized":
        _rebuild(src, dst)
        _declare_size(dst, WEIGHTS, 3 * 1024 ** 3)  # over the 2 GiB limit: refused before inflating
        return dst, WEIGHTS
    if kind == "lying_size":
        _rebuild(src, dst)
        _declare_size(dst, WEIGHTS, 100)  # inflates to more than it declares
        return dst, WEIGHTS
    if kind == "tampered":
        with zipfile.ZipFile(src) as z:
            content = {n: z.read(n) for n in z.namelist()}
        content["selection.json"] = content["selection.json"].replace(b'"largest', b'"LARGEST')
        with zipfile.ZipFile(dst, "w") as z:
            for n, d in content.items():
                z.writestr(n, d)
        return dst, "selection.json"
    if kind == "file_ending":  # the ending names the outputs: '/../' in it would write outside OUT
        with zipfile.ZipFile(src) as z:
            dataset = json.loads(z.read("dataset.json"))
        dataset["file_ending"] = "/../../evil.nii.gz"
        return _rebuild(src, dst, members={"dataset.json": json.dumps(dataset).encode()}), "dataset.json"
    if kind == "format_version":
        return _rebuild(src, dst, manifest_edit=lambda m: m.update(format_version=2, autoseg_version="9.0")), \
            MANIFEST_JSON
    raise ValueError(kind)


HOSTILE = ["parent", "absolute", "symlink", "duplicate", "pickle_as_weights", "pickle_pt", "oversized", "lying_size",
           "tampered", "file_ending", "format_version"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_zip_is_refused_with_one_line(exported, tmp_path, capsys, monkeypatch, kind):
    marker = tmp_path / "pwned"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    zip_path, member = _hostile(kind, exported["model"], tmp_path / "hostile.zip", marker)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    code = main(["predict", "--model", str(zip_path), "-i", str(exported["ds"] / "imagesTs"), "-o", "preds",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("autoseg: error:")]
    assert len(lines) == 1 and str(zip_path) in lines[0] and repr(member) in lines[0], err
    assert "Traceback" not in err
    if kind == "format_version":
        assert "format version 2" in lines[0] and "9.0" in lines[0] and "export the model again" in lines[0]
    assert not marker.exists()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no prediction, nothing else
    assert not (tmp_path / "evil").exists() and not (work.parent / "evil").exists()


def test_pickle_weights_refused_in_a_fresh_process(exported, tmp_path):
    marker = tmp_path / "pwned"
    zip_path, _ = _hostile("pickle_as_weights", exported["model"], tmp_path / "hostile.zip", marker)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "autoseg", "predict", "--model", str(zip_path), "-i",
                           str(exported["ds"] / "imagesTs"), "-o", str(tmp_path / "preds"), "--no-progress"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "is not a safetensors file" in done.stderr, done.stderr
    assert not marker.exists() and not (tmp_path / "preds").exists()


def test_export_refuses_best_when_missing_and_predict_refuses_another_checkpoint(exported, tmp_path, capsys):
    assert main(["predict", "--model", str(exported["model"]), "-i", str(exported["ds"] / "imagesTs"), "-o",
                 str(tmp_path / "p"), "--checkpoint", "best", "--no-progress"]) == 1
    assert "holds the 'final' weights" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # --model and --workdir exclude each other
        main(["predict", "--model", str(exported["model"]), "--workdir", str(exported["run"]), "-i", "x", "-o", "y"])
    assert e.value.code == 2
    assert main(["predict", "--model", str(exported["model"]), "-i", str(exported["ds"] / "imagesTs"), "-o",
                 str(tmp_path / "p"), "-c", "2d", "--no-progress"]) == 1
    assert "2d" in capsys.readouterr().err and not (tmp_path / "p").exists()
