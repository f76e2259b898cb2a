"""Helpers shared by the benchmark scripts: durations, dataset checks, splits, measured runs, machine info.

Stdlib + psutil only (no autoseg import), so the benchmarks still run when autoseg itself is broken.
Run the scripts with the project's interpreter (``.venv/bin/python``), which has psutil.

Memory is measured on the whole process tree of a command (the command and all its children, e.g.
data-augmentation workers and export pools): every ``interval_s`` the resident set sizes (RSS) of all
live processes are summed, and the peak of that sum is reported. Because forked workers share pages,
the RSS sum over-counts; the proportional set size (PSS, shared pages divided among their users) is
sampled too and reported beside it.
"""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

EXIT_USAGE = 2  # missing dataset, bad argument
EXIT_FAILED = 1  # a measured command failed

_DURATION_RE = re.compile(r"^(?:(?P<d>\d+(?:\.\d+)?)d)?(?:(?P<h>\d+(?:\.\d+)?)h)?"
                          r"(?:(?P<m>\d+(?:\.\d+)?)m(?:in)?)?(?:(?P<s>\d+(?:\.\d+)?)s)?$")
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


class BenchError(Exception):
    """A problem the user can fix (missing dataset, bad splits, failed command); message says what to do.
    ``exit_code``: 2 for usage problems (missing dataset, bad argument), 1 for a failed command."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.exit_code = exit_code


def parse_duration(text: str) -> float:
    """Seconds in a duration such as '20m', '90s', '1h30m', '1.5h' or a plain number of seconds (> 0)."""
    s = str(text).strip().lower().replace(" ", "")
    seconds = None
    try:
        seconds = float(s)
    except ValueError:
        m = _DURATION_RE.match(s)
        if s and m and any(m.group(u) for u in _UNIT_S):
            seconds = sum(float(m.group(u)) * f for u, f in _UNIT_S.items() if m.group(u))
    if seconds is None or seconds != seconds or seconds <= 0 or seconds == float("inf"):
        raise BenchError(f"cannot read the duration {text!r}; expected e.g. '20m', '90s', '1h30m' or "
                         f"a number of seconds")
    return seconds


def check_dataset(path: str | Path) -> Path:
    """The dataset folder (nnU-Net v2 layout) as an absolute path; BenchError '<path> not found' if absent."""
    p = Path(path)
    if not p.is_dir():
        raise BenchError(f"{path} not found (expected a dataset folder in nnU-Net v2 layout: imagesTr/, "
                         f"labelsTr/, dataset.json); pass its path with --dataset")
    if not (p / "dataset.json").is_file():
        raise BenchError(f"{path}/dataset.json not found: {path} is not an nnU-Net v2 dataset folder")
    return p.resolve()


def dataset_unless_report_only(ap: Any, args: Any) -> Path | None:
    """``args.dataset`` checked (:func:`check_dataset`), or None with ``--report-only``; an argparse
    error naming the flag when neither is given."""
    if args.report_only:
        return None
    if not args.dataset:
        ap.error("--dataset is required unless --report-only")
    return check_dataset(args.dataset)


def dataset_id_and_name(folder: str | Path) -> tuple[int, str]:
    """(3-digit id, folder name) from a folder named 'DatasetXXX_Name', which nnU-Net requires."""
    name = Path(folder).name
    m = re.match(r"^Dataset(\d{3})_\w+$", name)
    if not m:
        raise BenchError(f"nnU-Net needs the dataset folder to be named DatasetXXX_Name (3 digits), found "
                         f"'{name}'; rename the folder (or symlink it under such a name) and retry")
    return int(m.group(1)), name


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: str | Path, data: Any) -> None:
    """Atomic JSON write (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def dataset_case_ids(dataset: Path) -> list[str]:
    """Case ids of a raw dataset: the labelsTr file names without the dataset.json file_ending."""
    ending = read_json(dataset / "dataset.json").get("file_ending", ".nii.gz")
    return sorted(f.name[: -len(ending)] for f in (dataset / "labelsTr").iterdir() if f.name.endswith(ending))


def to_nnunet_splits(data: Any, where: str = "splits file") -> list[dict[str, list[str]]]:
    """nnU-Net's splits_final.json list ``[{train, val}, ...]`` from autoseg's splits.json
    (``{"folds": [{"train", "val"}], ...}``) or from an nnU-Net list (returned unchanged, checked)."""
    folds = data.get("folds") if isinstance(data, dict) else data
    if not isinstance(folds, list) or not folds:
        raise BenchError(f"{where}: expected autoseg's splits.json ({{'folds': [{{'train': [...], "
                         f"'val': [...]}}]}}) or nnU-Net's splits_final.json (a list of folds)")
    out = []
    for k, fold in enumerate(folds):
        if not isinstance(fold, dict) or not {"train", "val"} <= set(fold):
            raise BenchError(f"{where}: fold {k} must have 'train' and 'val' lists of case ids")
        tr, va = fold["train"], fold["val"]
        if not all(isinstance(x, list) and all(isinstance(c, str) for c in x) for x in (tr, va)):
            raise BenchError(f"{where}: fold {k} 'train' and 'val' must be lists of case ids (strings)")
        out.append({"train": sorted(tr), "val": sorted(va)})
    return out


def check_splits(splits: list[dict[str, list[str]]], fold: int, case_ids: Sequence[str], where: str) -> None:
    """Fold ``fold`` exists and every id in the splits is a case of the dataset."""
    if not 0 <= fold < len(splits):
        raise BenchError(f"{where} has {len(splits)} folds, fold {fold} was asked for; pick 0.."
                         f"{len(splits) - 1} (nnU-Net would silently train on a random 80:20 split instead)")
    known = set(case_ids)
    unknown = sorted({c for f in splits for c in f["train"] + f["val"]} - known)
    if unknown:
        raise BenchError(f"{where} names {len(unknown)} case(s) the dataset does not have, e.g. "
                         f"{', '.join(unknown[:5])}; was it made for another dataset?")


# --------------------------------------------------------------------------- measured runs

@dataclass
class RunStats:
    """What :func:`run_monitored` measured. Memory in MB (10^6 bytes), times in seconds."""

    command: list[str]
    returncode: int
    seconds: float
    peak_rss_mb: float
    peak_pss_mb: float | None
    log: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tree_memory(root: Any, with_pss: bool) -> tuple[float, float | None]:
    """Summed RSS and PSS (bytes) over ``root`` (a psutil.Process) and its live descendants."""
    import psutil

    try:
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0.0, None
    rss, pss = 0.0, (0.0 if with_pss else None)
    for p in procs:
        try:
            if with_pss:
                info = p.memory_full_info()
                rss += info.rss
                pss = (pss or 0.0) + getattr(info, "pss", info.rss)
            else:
                rss += p.memory_info().rss
        except psutil.Error:  # exited between listing and reading, or not ours to read
            continue
    return rss, pss


def tail(path: str | Path, n_lines: int = 30) -> str:
    """The last ``n_lines`` lines of a text file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-n_lines:])


def run_monitored(cmd: Sequence[str], log_path: str | Path, *, env: dict[str, str] | None = None,
                  label: str = "", interval_s: float = 0.5, pss_every: int = 4,
                  heartbeat_s: float = 60.0, cwd: str | Path | None = None) -> RunStats:
    """Run ``cmd`` with stdout+stderr into ``log_path``, timing it and sampling the memory of its
    process tree every ``interval_s`` (PSS every ``pss_every``-th sample: it reads smaps).
    Prints a progress line every ``heartbeat_s``. Does not raise on a non-zero exit: check
    ``returncode`` (and :func:`tail` the log)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - depends on the interpreter
        raise BenchError("psutil is needed to measure memory; run the benchmark with the project's "
                         "interpreter: .venv/bin/python benchmarks/...") from None
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    peak_rss, peak_pss, n = 0.0, None, 0
    t0 = time.monotonic()
    last_beat = t0
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            rss, pss = _tree_memory(root, with_pss=(n % pss_every == 0))
            peak_rss = max(peak_rss, rss)
            if pss is not None:
                peak_pss = max(peak_pss or 0.0, pss)
            n += 1
            now = time.monotonic()
            if heartbeat_s and now - last_beat >= heartbeat_s:
                last_beat = now
                last = tail(log_path, 1).strip()[:120]
                print(f"  [{label}] {now - t0:6.0f} s, peak {peak_rss / 1e6:7.0f} MB | {last}", flush=True)
            try:
                proc.wait(timeout=interval_s)
            except subprocess.TimeoutExpired:
                pass
    seconds = time.monotonic() - t0
    return RunStats(command=list(cmd), returncode=proc.returncode, seconds=round(seconds, 2),
                    peak_rss_mb=round(peak_rss / 1e6, 1),
                    peak_pss_mb=None if peak_pss is None else round(peak_pss / 1e6, 1), log=str(log_path))


def require_success(stats: RunStats, what: str) -> None:
    """BenchError with the tail of the log when ``stats`` is a failed run."""
    if stats.returncode != 0:
        raise BenchError(f"{what} failed (exit code {stats.returncode}) after {stats.seconds:.0f} s; "
                         f"full log: {stats.log}\n--- last lines ---\n{tail(stats.log, 40)}",
                         exit_code=EXIT_FAILED)


# --------------------------------------------------------------------------- machine

def machine_info() -> dict[str, Any]:
    """Cores (total and usable by this process), RAM, CPU model, OS and Python of this machine."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        import psutil

        ram_gb = round(psutil.virtual_memory().total / 1024**3, 1)
    except ImportError:  # pragma: no cover
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_model": model or platform.processor() or "unknown", "cpu_cores": os.cpu_count(),
            "cpu_cores_usable": usable, "ram_gb": ram_gb, "os": platform.platform(),
            "python": sys.version.split()[0]}


def dice_from_summary(summary: dict[str, Any]) -> tuple[dict[str, float | None], float | None]:
    """(Dice per foreground label, foreground mean) from either summary.json format:
    autoseg's (``per_class[label].dice``, ``foreground_mean.dice``) or nnU-Net's
    (``mean[label].Dice``, ``foreground_mean.Dice``). Labels are strings ('1', '2', ...)."""
    if "per_class" in summary:
        per = {str(k): v.get("dice") for k, v in summary["per_class"].items() if str(k) != "0"}
        return per, summary.get("foreground_mean", {}).get("dice")
    if "mean" in summary:
        per = {str(k): v.get("Dice") for k, v in summary["mean"].items() if str(k) != "0"}
        return per, summary.get("foreground_mean", {}).get("Dice")
    raise BenchError("summary.json has neither 'per_class' (autoseg) nor 'mean' (nnU-Net): unknown format")
