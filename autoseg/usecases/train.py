"""Use case `autoseg train`: one configuration on one fold (resuming by itself), then its final validation.

Settings are the defaults sized for the device that is really here, then the user's overrides; the
time budget is the one plans.json records (``Plans.time_budget_s``) unless --time-budget or --epochs
is given, and the training's first log line says which.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import AutosegError, StaleArtifactError
from ..hardware import format_duration
from ..locks import exclusive, shared
from ..schemas import SCHEMA_VERSION, ConfigurationPlan, FoldSummary, Plans, Splits, TrainingSettings, load_json
from ..store import RunStore, State, configuration_hash
from ..workdir import Workdir

log = logging.getLogger(__name__)


def default_training_settings(plans: Plans, config: ConfigurationPlan, fold: str, *,
                              device: str | None = None) -> dict:
    """Defaults before CLI overrides: nnU-Net's recipe, sized for the device that is really here."""
    from ..hardware import usable_cpu_cores, worker_count

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
        precision = "auto"  # bf16 where the GPU supports it, else fp16 with a gradient scaler (training/precision.py)
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
        time_budget_s=plans.time_budget_s if (on_cpu or plans.time_budget_given) else None,
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
    from ..schemas import TrainingSettings, from_dict, to_dict

    device = overrides.get("device")
    base = default_training_settings(plans, config, fold, device=device)
    if existing is not None and existing.exists():
        old = to_dict(load_json(TrainingSettings, existing))
        base.update({k: v for k, v in old.items() if k != "overrides"})
    clean = {k: v for k, v in overrides.items() if v is not None}
    if "epochs" in clean and "time_budget_s" not in clean:
        clean["time_budget_s"] = None  # an explicit epoch count wins over the planned budget
    base.update(clean)
    fresh = existing is None or not existing.exists()
    if fresh or "recipe" in clean:  # a resumed training keeps its recipe unless --recipe is given again
        _apply_recipe(config, base, clean)
    base["overrides"] = {**(base.get("overrides") or {}), **clean}
    if base["precision"] == "fp16" and not str(base["device"]).startswith("cuda"):
        raise AutosegError(f"--precision fp16 needs a CUDA device, but training runs on {base['device']}; "
                           f"use --precision bf16 (CPUs with native bf16), fp32, or auto")
    return from_dict(TrainingSettings, base, where="training settings")


def _apply_recipe(config: ConfigurationPlan, base: dict, clean: dict) -> None:
    """Set the recipe's optimizer and schedule (``training/recipe.py``) in ``base``; a setting the user
    gave (e.g. --lr) wins over the recipe's."""
    from ..training.recipe import RECIPES, choose_recipe

    name = clean.get("recipe", "auto")
    if name == "auto":
        name, reason = choose_recipe(config, base)
    elif name in RECIPES:
        reason = f"recipe {name} (--recipe {name})"
    else:
        raise AutosegError(f"recipe '{name}' is unknown; expected auto or one of {', '.join(RECIPES)}")
    base.update({k: v for k, v in RECIPES[name].items() if k not in clean})
    base["recipe"], base["recipe_reason"] = name, reason


@dataclass(frozen=True)
class TrainResult:
    configuration: str
    fold: str
    precision: str | None  # the precision trained in ("auto" resolved)
    iterations: int  # training iterations of the whole run (all resumes)
    train_seconds: float  # wall seconds of the training (budget clock), validation excluded
    time_budget_s: float | None
    summary: FoldSummary | None  # the final validation (None with validate=False)


def budget_line(plans: Plans, settings: TrainingSettings) -> str:
    """The training's first line: how long it runs, and where that comes from."""
    o = settings.overrides or {}
    if settings.time_budget_s is None:
        why = "--epochs" if "epochs" in o else ("no time budget in plans.json" if plans.time_budget_s is None
                                               else "the device is not the CPU the plan's budget was made for")
        return (f"schedule: {settings.epochs} epochs x {settings.iterations_per_epoch} iterations ({why}); "
                f"no time budget")
    if "time_budget_s" in o:
        source = "--time-budget"
    elif plans.time_budget_given:
        source = "recorded in plans.json by `autoseg plan --time-budget`"
    else:
        source = ("the default recorded in plans.json: `autoseg plan` was given no --time-budget and sized the "
                  "network for it; give --time-budget to change it")
    return f"time budget {format_duration(settings.time_budget_s)} for this training ({source})"


def train_fold(workdir: str | Path, configuration: str, fold: str, *, overrides: dict | None = None,
               progress: bool = True, validate: bool = True) -> TrainResult:
    """Train one configuration on one fold (resuming if a checkpoint exists), then validate it.

    A cascade configuration (``previous_stage`` set) needs the previous stage's held-out segmentation of
    every training and validation case (written by that stage's folds, see :func:`_require_previous_stage`).
    """
    from ..training.distributed import agree, from_environment
    from ..training.isolation import run_training_guarded
    from ..training.splits import fold_cases
    from ..training.trainer import Trainer

    overrides = dict(overrides or {})
    dist = from_environment(overrides.get("device") or _default_device())  # a torchrun job, or None
    main = dist is None or dist.is_main
    if not main:  # the other ranks train; rank 0 reports
        progress = False
        logging.getLogger("autoseg").setLevel(logging.WARNING)
    continue_for = overrides.pop("continue_for", None)
    store = RunStore(workdir)
    wd = store.wd
    plans = store.plans()
    config = plans.configuration(configuration)
    splits = store.splits()
    train_ids, val_ids = fold_cases(splits, fold)
    previous_segs = _require_previous_stage(wd, plans, config, splits, [*train_ids, *val_ids]) \
        if config.previous_stage else None
    settings_path = wd.train_settings_json(config.name, fold)
    fresh = store.fold_freshness(plans, config.name, fold)
    has_checkpoints = any(wd.checkpoint(config.name, fold, w).exists() for w in ("latest", "final"))
    if has_checkpoints and fresh.state is State.STALE:
        raise StaleArtifactError(
            f"{wd.fold_dir(config.name, fold)} was trained with another plan for {config.name} (plans.json "
            f"changed since: {fresh.reason}). Delete that folder to train this fold again with the current "
            f"plans, or use another --workdir.")
    lock = wd.fold_dir(config.name, fold) / ".train.lock"
    fold_lock = exclusive(lock, f"{config.name} fold {fold} of {wd.root}",
                          hint="two trainings of one fold would overwrite each other's checkpoints; wait for it to "
                               "end, or train another fold (different folds may run at the same time)") \
        if main else contextlib.nullcontext()  # torchrun: rank 0 holds the fold for the whole job
    with shared(wd.plan_lock, f"work folder {wd.root}",
                hint="`autoseg plan` is running on it and may change the plans and data this training reads; "
                     "wait for it to end, then train"), fold_lock:
        start = agree(_new_phase(wd, config.name, str(fold), continue_for) if main else None, dist)
        if start is not None and continue_for is not None:
            overrides["time_budget_s"] = float(continue_for)
        if main:
            settings = resolve_training_settings(plans, config, str(fold), overrides, existing=settings_path)
            settings = replace(settings, configuration_hash=configuration_hash(config),
                               world_size=dist.world_size if dist is not None else 1)
            _warn_if_smaller_device(plans, settings.device)
            store.save(settings, settings_path)
        settings = agree(settings if main else None, dist)
        if dist is not None:
            from ..training.distributed import gather, rank_batch_sizes

            ranks = gather(f"rank {dist.rank}: pid {os.getpid()} on {socket.gethostname()} "
                           f"({dist.device(settings.device)})", dist)
            log.info("training %s fold %s: world size %d (%s); global batch %d as %s per rank; %s", config.name,
                     fold, dist.world_size, dist.backend, settings.batch_size,
                     rank_batch_sizes(settings.batch_size, dist.world_size), "; ".join(ranks))
        log.info("training %s fold %s: %s", config.name, fold, budget_line(plans, settings))
        if settings.recipe_reason:
            log.info("training %s fold %s: %s", config.name, fold, settings.recipe_reason)
        log.info("training %s fold %s on %s (%s): %d training / %d validation cases", config.name, fold,
                 settings.device, settings.precision, len(train_ids), len(val_ids))
        trainer = Trainer(wd, config, settings, train_ids, val_ids, progress=progress,
                          previous_stage_segs=previous_segs, dist=dist)
        if start is not None:
            trainer.continue_from, trainer.state = start
            if settings.time_budget_s is None:  # an epoch schedule: this phase's epochs come on top
                trainer.state.total_epochs = trainer.state.epoch + settings.epochs
        elif settings.pretrained and not has_checkpoints:  # refuse a model that does not fit before any work
            from ..model.pretrained import load_pretrained

            load_pretrained(settings.pretrained, trainer.network, what=f"{config.name}'s plan in {wd.root}")
        if dist is None:
            state = run_training_guarded(trainer)  # bf16 on a CPU: fit() in a child, fp32 again if it crashes
        else:  # a torchrun job trains in its ranks' own processes (a crashed rank ends the job; rerun resumes)
            state = trainer.fit()
        summary = None
        if validate and main:
            from ..training.validation import validate_fold

            summary = validate_fold(wd, plans, config, settings, trainer.network, val_ids, store.manifest(),
                                    progress=progress, precision=state.precision, previous_stage_segs=previous_segs,
                                    mode=state.final_validation)
        return TrainResult(configuration=config.name, fold=str(fold), precision=state.precision,
                           iterations=sum(int(r.get("iterations", 0)) for r in state.log),
                           train_seconds=round(float(state.elapsed_s), 1), time_budget_s=settings.time_budget_s,
                           summary=summary)


def _new_phase(wd: Workdir, name: str, fold: str, continue_for: float | None):
    """``(checkpoint, TrainState)`` when this call starts a new phase of a finished training (``--continue-for``,
    or a continuation interrupted before its first checkpoint): the finished phase's final checkpoint, moved
    aside as ``checkpoint_final.phase<N>.pt``, and the state the new phase starts with (its log and epoch
    count go on, with ``phase`` N+1). None when the fold resumes or trains as usual."""
    import os
    import re

    from ..model.checkpoint import load_checkpoint
    from ..training.trainer import TrainState

    latest, final = wd.checkpoint(name, fold, "latest"), wd.checkpoint(name, fold, "final")
    phase_files = sorted(final.parent.glob("checkpoint_final.phase*.pt"),
                         key=lambda p: int(re.fullmatch(r"checkpoint_final\.phase(\d+)\.pt", p.name)[1]))
    if latest.exists():
        if continue_for is not None:
            log.info("%s fold %s has an unfinished run: resuming it first (run --continue-for again once it has "
                     "finished to add time)", name, fold)
        return None
    if final.exists():
        if continue_for is None:
            return None
        saved = load_checkpoint(final)["state"]  # verified before anything is moved
        source = final.with_name(f"checkpoint_final.phase{int(saved.get('phase', 1))}.pt")
        os.replace(final, source)
    elif phase_files:
        source = phase_files[-1]
        saved = load_checkpoint(source)["state"]
        log.warning("%s fold %s: the continuation from %s was interrupted before its first checkpoint; starting it "
                    "again", name, fold, source.name)
    elif continue_for is not None:
        raise AutosegError(f"nothing to continue: {name} fold {fold} of {wd.root} has no finished training; run "
                           f"`autoseg train --workdir {wd.root} -c {name} --fold {fold}` first")
    else:
        return None
    phase = int(saved.get("phase", 1))
    records = [{**r, "phase": r.get("phase", phase)} for r in saved.get("log", [])]
    state = TrainState(epoch=int(saved.get("epoch", len(records))), log=records, phase=phase + 1,
                       ema_dice=saved.get("ema_dice"), best_ema_dice=float(saved.get("best_ema_dice", -1.0)))
    log.info("%s fold %s: phase %d starts from %s (%d epochs so far)", name, fold, phase + 1, source.name,
             state.epoch)
    return source, state


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def planned_in_training_order(workdir: str | Path) -> list[str]:
    """Every configuration of plans.json, each after the stage it takes its input from."""
    from ..inference.cascade_predict import stage_order

    plans = RunStore(workdir).plans()
    return stage_order(plans, list(plans.configurations))


def _previous_stage_files(wd: Workdir, splits: Splits, config: ConfigurationPlan, case_ids: list[str]
                          ) -> tuple[dict[str, Path], list[str], list[int]]:
    """(case id -> the previous stage's ``<case>_seg.npy``, the case ids whose file is missing, the previous
    stage's folds that write them)."""
    from ..training.cascade import previous_stage_fold, previous_stage_seg_paths

    paths = previous_stage_seg_paths(wd, splits, config.previous_stage, case_ids)
    missing = [cid for cid, path in paths.items() if not path.is_file()]
    return paths, missing, sorted({previous_stage_fold(splits, cid) for cid in missing})


def waiting_for_previous_stage(workdir: str | Path, configuration: str, fold: str) -> str | None:
    """Why ``configuration`` cannot train ``fold`` yet (its previous stage's held-out predictions are
    missing: folds of the previous stage not trained), or None when it can (or has no previous stage)."""
    store = RunStore(workdir)
    config = store.plans().configuration(configuration)
    if not config.previous_stage:
        return None
    splits = store.splits()
    from ..training.splits import fold_cases

    train_ids, val_ids = fold_cases(splits, fold)
    _, missing, folds = _previous_stage_files(store.wd, splits, config, [*train_ids, *val_ids])
    if not missing:
        return None
    return (f"{configuration} fold {fold} not trained yet: it trains on the held-out predictions of "
            f"{config.previous_stage}, and {config.previous_stage} fold(s) {', '.join(map(str, folds))} are not "
            f"trained yet (or did not finish their final validation). Train them (`autoseg train --workdir "
            f"{store.root} -c {config.previous_stage} --fold K` for each, or `autoseg train --workdir {store.root} "
            f"--fold K` for every fold), then run this command again: finished trainings are reused.")


def _require_previous_stage(wd: Workdir, plans: Plans, config: ConfigurationPlan, splits: Splits,
                            case_ids: list[str]) -> dict[str, Path]:
    """case id -> the previous stage's ``<case>_seg.npy`` from the fold that held the case out.

    Every file must exist; else AutosegError naming the missing files and the commands that write
    them (training a previous-stage fold, or re-running a trained one, writes its held-out cases').
    """
    from ..model.cascade import cascade_foreground_labels

    prev = config.previous_stage
    paths, missing, folds = _previous_stage_files(wd, splits, config, case_ids)
    if missing:
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


def train(workdir: str | Path, fold: str, *, configuration: str | None = None, overrides: dict | None = None,
          progress: bool = True, validate: bool = True,
          report: Callable[[str], None] | None = None) -> list[TrainResult]:
    """`autoseg train`: ``configuration``, or every planned one in training order (previous stages
    first), on ``fold``; ``report`` gets a header line before each when there are several."""
    from ..training.distributed import is_main_process, launched_by_torchrun, shutdown

    names = [configuration] if configuration else planned_in_training_order(workdir)
    results = []
    try:
        for i, name in enumerate(names):
            if len(names) > 1 and report is not None:
                report(f"== {name} fold {fold} ({i + 1} of {len(names)} configurations: {', '.join(names)})")
            # every planned configuration: a cascade stage whose previous stage lacks other folds waits (the
            # loop over folds trains it on its last fold; run again for the rest) instead of failing the loop
            waiting = waiting_for_previous_stage(workdir, name, fold) if configuration is None else None
            if waiting:
                if is_main_process():  # under torchrun every rank skips it; rank 0 says so
                    (report or log.warning)(f"skipped: {waiting}")
                continue
            results.append(train_fold(workdir, name, fold, overrides=overrides, progress=progress,
                                      validate=validate))
    finally:
        if launched_by_torchrun():
            shutdown()
    return results


def torchrun_command(argv: list[str], nproc: int) -> list[str]:
    """`autoseg train ... --nproc N` as the torchrun command that runs it on N processes of this machine."""
    import sys

    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(nproc)}",
            "-m", "autoseg", *rest]
