"""Data-parallel training of one fold under torchrun on the CPU (gloo), issue 15 item 1: both ranks train,
rank 0 alone writes, the ranks' weights agree, and a killed job resumes from rank 0's checkpoint."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from autoseg.cli import main
from autoseg.training.distributed import rank_batch_sizes
from autoseg.workdir import Workdir
from tests.synthetic import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
PLAN = ["--no-progress", "--num-workers", "1", "--device", "cpu", "--cpu-gflops", "100"]
TRAIN = ["-c", "3d_fullres", "--iterations-per-epoch", "2", "--validation-iterations", "1", "--precision", "fp32",
         "--num-workers", "0", "--no-progress", "--device", "cpu"]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo on POSIX")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    ds = make_synthetic_dataset(root / "Dataset062_DDP", n_cases=8, shape=(10, 16, 16))
    assert main(["plan", str(ds), "--workdir", str(root / "run"), *PLAN]) == 0
    return root / "run"


def test_the_global_batch_is_dealt_over_the_ranks():
    assert rank_batch_sizes(2, 2) == [1, 1]
    assert rank_batch_sizes(5, 2) == [3, 2]
    assert rank_batch_sizes(12, 4) == [3, 3, 3, 3]
    assert rank_batch_sizes(1, 2) == [1, 1]  # every rank trains on at least one sample


def test_nproc_2_trains_on_both_ranks_with_one_writer_and_equal_weights(planned):
    wd = Workdir(planned)
    proc = subprocess.run([sys.executable, "-m", "autoseg", "train", "--workdir", str(planned), "--fold", "0",
                           *TRAIN, "--epochs", "3", "--nproc", "2"],
                          capture_output=True, text=True, env=_env(), timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "torch.distributed.run --standalone --nproc-per-node=2 -m autoseg train" in out  # the launcher
    assert "world size 2 (gloo)" in out and "rank 0: pid" in out and "rank 1: pid" in out  # both ranks ran
    assert "global batch 2 as [1, 1] per rank" in out
    assert "weights identical on all 2 rank(s)" in out
    records = [json.loads(line) for line in wd.training_log_jsonl("3d_fullres", "0").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]  # one writer: two would have written every epoch twice
    assert out.count("epoch 3/3") == 1  # rank 1 reports nothing
    settings = json.loads(wd.train_settings_json("3d_fullres", "0").read_text())
    assert settings["world_size"] == 2 and settings["batch_size"] == 2
    assert wd.checkpoint("3d_fullres", "0", "final").is_file()
    assert (wd.fold_dir("3d_fullres", "0") / "validation" / "summary.json").is_file()  # rank 0 validated


def test_a_killed_torchrun_job_resumes_from_its_checkpoint(planned):
    """Under a time budget: the ranks share rank 0's clock (a rank on its own clock takes other learning
    rates, and the weight check at the end fails)."""
    wd = Workdir(planned)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "autoseg",
           "train", "--workdir", str(planned), "--fold", "1", *TRAIN, "--time-budget", "15s", "--no-validation"]
    log_path = wd.training_log_jsonl("3d_fullres", "1")
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and job.poll() is None:
            if log_path.exists() and len(log_path.read_text().splitlines()) >= 2:
                break
            time.sleep(0.02)
    finally:  # the whole job, torchrun and both ranks (which run in sessions of their own), as a crash would
        tree = [job, *psutil.Process(job.pid).children(recursive=True)]
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGKILL)
        job.wait()
        psutil.wait_procs(tree[1:], timeout=30)
    assert not wd.checkpoint("3d_fullres", "1", "final").exists(), "the job finished before it could be killed"
    assert wd.checkpoint("3d_fullres", "1", "latest").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    assert "resumed from checkpoint_latest.pt at epoch" in out
    assert "weights identical on all 2 rank(s)" in out
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(records) >= 3 and [r["epoch"] for r in records] == list(range(1, len(records) + 1))  # none lost or twice
    assert records[-1]["lr"] == 0.0  # the budget's schedule ran to its end on rank 0's clock
    assert wd.checkpoint("3d_fullres", "1", "final").is_file()
