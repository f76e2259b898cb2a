"""The use cases as plain functions: plan_dataset, train_fold, ...

Each stage reads its inputs from the work folder, skips work whose output is present and current,
and stops with an error naming the command to rerun when an output is stale.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from . import __version__
from .errors import AutosegError, StaleArtifactError
from .schemas import (
    SCHEMA_VERSION,
    ConfigurationPlan,
    DatasetManifest,
    Fingerprint,
    HardwareBudget,
    Plans,
    Splits,
    load_json,
    save_json,
    stable_hash,
)
from .workdir import Workdir

log = logging.getLogger(__name__)


def fingerprint_hash(fp: Fingerprint) -> str:
    return stable_hash(fp)


def plans_hash(plans: Plans) -> str:
    """Hash of what training depends on: every configuration (not the hardware record)."""
    return stable_hash({k: v for k, v in plans.configurations.items()})


# --------------------------------------------------------------------------- plan

def _fingerprint(manifest: DatasetManifest, wd: Workdir, *, num_workers: int | None, progress: bool,
                 overwrite: bool) -> Fingerprint:
    from .fingerprint import extract_fingerprint

    if wd.fingerprint_json.exists() and not overwrite:
        try:
            fp = load_json(Fingerprint, wd.fingerprint_json)
        except AutosegError as e:
            log.warning("existing fingerprint is unreadable (%s); extracting it again", e)
        else:
            if fp.dataset_hash == manifest.dataset_hash:
                log.info("fingerprint.json is current (dataset unchanged): reusing it")
                return fp
            log.info("dataset changed since fingerprint.json was written: extracting it again")
    fp = extract_fingerprint(manifest, num_workers=num_workers, progress=progress)
    save_json(fp, wd.fingerprint_json)
    return fp


def _plans(fp: Fingerprint, budget: HardwareBudget, planner_name: str, wd: Workdir, *,
           overwrite: bool) -> Plans:
    from .planning.registry import get_planner

    planner = get_planner(planner_name)
    new = planner.plan(fp, budget)
    new = replace(new, planner=planner_name, autoseg_version=__version__,
                  fingerprint_hash=fingerprint_hash(fp), schema_version=SCHEMA_VERSION)
    if wd.plans_json.exists() and not overwrite:
        try:
            old = load_json(Plans, wd.plans_json)
        except AutosegError as e:
            raise StaleArtifactError(f"{wd.plans_json} cannot be read ({e}); rerun `autoseg plan` with "
                                     f"--overwrite to plan again") from None
        same_inputs = old.fingerprint_hash == new.fingerprint_hash and old.planner == new.planner
        if same_inputs and (old.hardware.overrides == new.hardware.overrides
                            and old.hardware.training_time_budget_s == new.hardware.training_time_budget_s):
            log.info("plans.json is current (same fingerprint, planner and budget): keeping it; "
                     "use --overwrite to plan again for this machine")
            return old
        if plans_hash(old) != plans_hash(new):
            trained = [p for p in wd.results_root.glob("*/fold_*/checkpoint_*.pt")] if wd.results_root.exists() else []
            if trained:
                raise StaleArtifactError(
                    f"{wd.plans_json} was made from other inputs (planner '{old.planner}', "
                    f"fingerprint {old.fingerprint_hash}, budget {old.hardware.overrides}) and "
                    f"{len(trained)} checkpoint(s) in {wd.results_root} were trained with it. Rerun "
                    f"`autoseg plan` with --overwrite to replace the plans (retrain afterwards), or use "
                    f"another --workdir.")
            log.info("planning inputs changed: replacing plans.json")
    save_json(new, wd.plans_json)
    return new


def _splits(case_ids: list[str], wd: Workdir, *, splits_file: str | Path | None, seed: int,
            overwrite: bool) -> Splits:
    from .training.splits import load_user_splits, make_splits

    ids_hash = stable_hash(sorted(case_ids))
    if splits_file is not None:
        splits = load_user_splits(splits_file, case_ids)
    else:
        if wd.splits_json.exists() and not overwrite:
            old = load_json(Splits, wd.splits_json)
            if old.case_ids_hash in ("", ids_hash) or old.source != "generated":
                if old.source != "generated":
                    load_user_splits(wd.splits_json, case_ids)  # still valid for these cases?
                log.info("splits.json is current: keeping it")
                return old
            log.info("the training cases changed: making new splits")
        splits = make_splits(case_ids, n_folds=5, seed=seed)
    splits = replace(splits, case_ids_hash=ids_hash)
    save_json(splits, wd.splits_json)
    return splits


def preprocessing_groups(plans: Plans) -> dict[str, ConfigurationPlan]:
    """One configuration per data_identifier: configurations that share preprocessing share a folder."""
    groups: dict[str, ConfigurationPlan] = {}
    for cfg in plans.configurations.values():
        groups.setdefault(cfg.data_identifier, cfg)
    return groups


def plan_dataset(dataset_dir: str | Path, workdir: str | Path, *, planner: str = "default",
                 device: str | None = None, gpu_memory_gb: float | None = None,
                 time_budget_s: float | None = None, splits_file: str | Path | None = None,
                 split_seed: int = 12345, num_workers: int | None = None, progress: bool = True,
                 overwrite: bool = False, measure_cpu: bool = True, cpu_gflops: float | None = None) -> Plans:
    """validate → fingerprint → plan → split → preprocess. Safe to re-run: current outputs are kept.

    Nothing is written to ``workdir`` when the dataset check fails.
    """
    from .data.dataset import load_dataset
    from .hardware import detect_hardware
    from .planning.registry import get_planner
    from .preprocessing.preprocess import preprocess_dataset

    get_planner(planner)  # fail on an unknown name before any work
    log.info("checking dataset %s", dataset_dir)
    manifest = load_dataset(dataset_dir, num_workers=num_workers or 1, progress=progress)
    log.info("dataset OK: %d training cases, %d channel(s), labels %s", len(manifest.cases),
             manifest.num_channels, manifest.labels)

    wd = Workdir(workdir)
    wd.root.mkdir(parents=True, exist_ok=True)
    save_json(manifest, wd.manifest_json)
    fp = _fingerprint(manifest, wd, num_workers=num_workers, progress=progress, overwrite=overwrite)
    budget = detect_hardware(device=device, gpu_memory_gb=gpu_memory_gb, time_budget_s=time_budget_s,
                             measure_cpu=measure_cpu, cpu_gflops=cpu_gflops)
    plans = _plans(fp, budget, planner, wd, overwrite=overwrite)
    from .planning.explain import explain_plans
    from .atomic import atomic_write_text

    atomic_write_text(wd.plans_explained_txt, "\n".join(explain_plans(plans)) + "\n")
    _splits([c.case_id for c in manifest.cases], wd, splits_file=splits_file, seed=split_seed,
            overwrite=overwrite)
    for data_id, cfg in preprocessing_groups(plans).items():
        log.info("preprocessing for %s (%s)", cfg.name, data_id)
        preprocess_dataset(manifest, cfg, wd, num_workers=num_workers, progress=progress, overwrite=overwrite)
    return plans


def load_manifest(workdir: str | Path) -> DatasetManifest:
    wd = Workdir(workdir)
    if not wd.manifest_json.exists():
        raise AutosegError(f"{wd.manifest_json} does not exist: run `autoseg plan DATASET --workdir {wd.root}` first")
    return load_json(DatasetManifest, wd.manifest_json)


def load_plans(workdir: str | Path) -> Plans:
    wd = Workdir(workdir)
    if not wd.plans_json.exists():
        raise AutosegError(f"{wd.plans_json} does not exist: run `autoseg plan DATASET --workdir {wd.root}` first")
    return load_json(Plans, wd.plans_json)


# --------------------------------------------------------------------------- train

def default_training_settings(plans: Plans, config: ConfigurationPlan, fold: str, *,
                              device: str | None = None) -> dict:
    """Defaults before CLI overrides: nnU-Net's recipe, sized for the device that is really here."""
    from .hardware import usable_cpu_cores, worker_count

    hw = plans.hardware
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    cores = usable_cpu_cores()
    on_cpu = device == "cpu"
    if on_cpu:
        # "auto": the trainer times fp32 and bf16 steps on the real network and keeps the faster
        # (bf16 won 1.9-2.9x for 3D and lost slightly for 2D on an AVX512-BF16 CPU with torch 2.13).
        precision = "auto"
        wanted = 0 if cores <= 4 else min(cores // 4, 4)  # compute-bound: keep the cores for the network
    else:
        precision = "fp16"
        wanted = max(1, min(cores - 1, 12))
    workers = 0 if wanted == 0 else worker_count(_augmentation_worker_gb(config), max_workers=wanted)
    return dict(
        schema_version=SCHEMA_VERSION, configuration=config.name, fold=str(fold),
        epochs=1000, iterations_per_epoch=250, validation_iterations_per_epoch=20 if on_cpu else 50,
        initial_lr=0.01, weight_decay=3e-5, momentum=0.99, grad_clip_norm=12.0, poly_exponent=0.9,
        batch_size=config.batch_size, patch_size=list(config.patch_size),
        foreground_oversample_fraction=config.foreground_oversample_fraction,
        num_workers=workers, device=device, precision=precision,
        seed=12345 + (int(fold) if str(fold).isdigit() else 99),
        time_budget_s=hw.training_time_budget_s if on_cpu else None,
        checkpoint_every_s=300.0, overrides={})


def _augmentation_worker_gb(config: ConfigurationPlan) -> float:
    """RAM of one augmentation worker: its queued batches of the enlarged initial patch (~1.5x per
    axis for rotation/scaling) in float32, with the copies the transforms make (~12), plus ~0.4 GB of
    interpreter and libraries."""
    import math

    voxels = math.prod(config.patch_size) * (1.5 ** len(config.patch_size)) * config.batch_size
    channels = config.network.in_channels + 1  # images + segmentation
    return 0.4 + voxels * channels * 4 * 12 / 1024**3


def resolve_training_settings(plans: Plans, config: ConfigurationPlan, fold: str,
                              overrides: dict, existing: Path | None = None):
    """Defaults, then the user's overrides. An existing run keeps its settings unless they are overridden."""
    from .schemas import TrainingSettings, from_dict, to_dict

    device = overrides.get("device")
    base = default_training_settings(plans, config, fold, device=device)
    if existing is not None and existing.exists():
        old = to_dict(load_json(TrainingSettings, existing))
        base.update({k: v for k, v in old.items() if k != "overrides"})
    clean = {k: v for k, v in overrides.items() if v is not None}
    if "epochs" in clean and "time_budget_s" not in clean:
        clean["time_budget_s"] = None  # an explicit epoch count wins over the planned budget
    base.update(clean)
    base["overrides"] = {**(base.get("overrides") or {}), **clean}
    if base["precision"] == "fp16" and not str(base["device"]).startswith("cuda"):
        raise AutosegError(f"--precision fp16 needs a CUDA device, but training runs on {base['device']}; "
                           f"use --precision bf16 (CPUs with native bf16), fp32, or auto")
    return from_dict(TrainingSettings, base, where="training settings")


def train_fold(workdir: str | Path, configuration: str, fold: str, *, overrides: dict | None = None,
               progress: bool = True, validate: bool = True):
    """Train one configuration on one fold (resuming if a checkpoint exists), then validate it.

    A cascade configuration (``previous_stage`` set) needs the previous stage's held-out segmentation of
    every training and validation case (written by that stage's folds, see :func:`_require_previous_stage`).
    """
    from .training.isolation import run_training_guarded
    from .training.splits import fold_cases
    from .training.trainer import Trainer

    wd = Workdir(workdir)
    plans = load_plans(wd.root)
    config = plans.configuration(configuration)
    splits = load_json(Splits, wd.splits_json)
    train_ids, val_ids = fold_cases(splits, fold)
    previous_segs = _require_previous_stage(wd, plans, config, splits, [*train_ids, *val_ids]) \
        if config.previous_stage else None
    settings_path = wd.train_settings_json(config.name, fold)
    _refuse_stale_fold(wd, config, fold, settings_path)
    settings = resolve_training_settings(plans, config, str(fold), overrides or {}, existing=settings_path)
    settings = replace(settings, plans_hash=stable_hash(config))
    _warn_if_smaller_device(plans, settings.device)
    wd.fold_dir(config.name, fold).mkdir(parents=True, exist_ok=True)
    save_json(settings, settings_path)
    log.info("training %s fold %s on %s (%s): %d training / %d validation cases", config.name, fold,
             settings.device, settings.precision, len(train_ids), len(val_ids))
    trainer = Trainer(wd, config, settings, train_ids, val_ids, progress=progress,
                      previous_stage_segs=previous_segs)
    state = run_training_guarded(trainer)  # bf16 on a CPU: fit() in a child process, fp32 again if it crashes
    summary = None
    if validate:
        from .inference.validation import validate_fold

        summary = validate_fold(wd, plans, config, settings, trainer.network, val_ids,
                                load_manifest(wd.root), progress=progress, precision=state.precision,
                                previous_stage_segs=previous_segs)
    return state, summary


def _refuse_stale_fold(wd: Workdir, config: ConfigurationPlan, fold: str, settings_path: Path) -> None:
    """A fold whose checkpoints were trained with another plan must not be resumed or reused."""
    from .schemas import TrainingSettings

    if not settings_path.exists():
        return
    old = load_json(TrainingSettings, settings_path)
    has_checkpoints = any(wd.checkpoint(config.name, fold, w).exists() for w in ("latest", "final"))
    if has_checkpoints and old.plans_hash and old.plans_hash != stable_hash(config):
        raise StaleArtifactError(
            f"{wd.fold_dir(config.name, fold)} was trained with another plan for {config.name} (plans.json "
            f"changed since). Delete that folder to train this fold again with the current plans, or use "
            f"another --workdir.")


def stale_folds(wd: Workdir, plans: Plans,
                folds: list[tuple[str, int | str]]) -> list[tuple[str, int | str, Path, str, str]]:
    """The (configuration, fold) pairs of ``folds`` trained with another plan than plans.json now holds,
    as ``(configuration, fold, train_settings.json, recorded hash, current hash)``.

    A fold is stale when its ``train_settings.json`` records a ``plans_hash`` and that differs from
    the hash of the configuration's current entry in plans.json (it was re-planned since): its
    networks and validation belong to other plans. Folds without a settings file or a recorded
    hash are not judged.
    """
    from .schemas import TrainingSettings

    stale = []
    for configuration, fold in folds:
        path = wd.train_settings_json(configuration, fold)
        if not path.exists():
            continue
        recorded = load_json(TrainingSettings, path).plans_hash
        current = stable_hash(plans.configuration(configuration))
        if recorded and recorded != current:
            stale.append((configuration, fold, path, recorded, current))
    return stale


def refuse_stale_folds(wd: Workdir, plans: Plans, folds: list[tuple[str, int | str]], *, purpose: str,
                       alternative: str = "") -> None:
    """StaleArtifactError naming every fold of :func:`stale_folds` and the commands that retrain it
    (``purpose``: what the folds are needed for; ``alternative``: another way out, a last line)."""
    stale = stale_folds(wd, plans, folds)
    if not stale:
        return
    what = "\n".join(f"  - {c} fold {f}: {p} records plans hash {r}, the {c} entry of plans.json now has {cur}"
                     for c, f, p, r, cur in stale)
    cmds = "\n".join(f"  rm -r {wd.fold_dir(c, f)} && autoseg train --workdir {wd.root} -c {c} --fold {f}"
                     for c, f, *_ in stale)
    raise StaleArtifactError(f"{len(stale)} trained fold(s) needed {purpose} were trained with other plans than "
                             f"{wd.plans_json} holds now (it was re-planned since), so their networks and "
                             f"validation do not belong to the current plans:\n{what}\nretrain each (delete "
                             f"the fold folder, then train it again):\n{cmds}"
                             + (f"\n{alternative}" if alternative else ""))


def _require_previous_stage(wd: Workdir, plans: Plans, config: ConfigurationPlan, splits: Splits,
                            case_ids: list[str]) -> dict[str, Path]:
    """case id -> the previous stage's ``<case>_seg.npy`` from the fold that held the case out.

    Every file must exist; else AutosegError naming the missing files and the commands that write
    them (training a previous-stage fold, or re-running a trained one, writes its held-out cases').
    """
    from .training.cascade import cascade_foreground_labels, previous_stage_fold, previous_stage_seg_paths

    prev = config.previous_stage
    paths = previous_stage_seg_paths(wd, splits, prev, case_ids)
    missing = [cid for cid, path in paths.items() if not path.is_file()]
    if missing:
        folds = sorted({previous_stage_fold(splits, cid) for cid in missing})
        cmds = "; ".join(f"autoseg train --workdir {wd.root} -c {prev} --fold {k}" for k in folds)
        shown = ", ".join(str(paths[c]) for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise AutosegError(f"{config.name} trains on the held-out predictions of {prev}, but {len(missing)} of "
                           f"the {len(paths)} needed file(s) are missing ({shown}): {prev} folds {folds} are "
                           f"not trained yet or did not finish their final validation. Run first: {cmds}")
    n_extra = len(cascade_foreground_labels(config))
    data_path = wd.case_data_npy(config.data_identifier, next(iter(paths))) if paths else None
    if data_path is not None and data_path.is_file():  # a missing file is reported by the data loader
        import numpy as np

        channels = int(np.load(data_path, mmap_mode="r").shape[0])
        if channels + n_extra != config.network.in_channels:
            raise AutosegError(f"{wd.plans_json}: {config.name} takes network.in_channels="
                               f"{config.network.in_channels}, but the images have {channels} channel(s) "
                               f"({data_path.name}) and the {prev} prediction adds {n_extra} one-hot "
                               f"channel(s), {channels + n_extra} in all; rerun `autoseg plan --overwrite`.")
    return paths


def _warn_if_smaller_device(plans: Plans, device: str) -> None:
    hw = plans.hardware
    if hw.device == "cuda" and device == "cpu":
        log.warning("plans.json was made for a GPU (%s GB) but training runs on the CPU: it will be slow. "
                    "Plan for this machine with `autoseg plan ... --device cpu --overwrite`.",
                    hw.gpu_total_memory_gb)
    if hw.device == "cuda" and device == "cuda":
        import torch

        total = torch.cuda.get_device_properties(0).total_memory / 1024**3
        if hw.gpu_total_memory_gb and total < 0.9 * hw.gpu_total_memory_gb:
            log.warning("this GPU has %.1f GB but the plans were made for %.1f GB: training may run out of "
                        "memory. Re-plan with `autoseg plan ... --gpu-memory-gb %.0f --overwrite`.",
                        total, hw.gpu_total_memory_gb, total)
