"""Use case `autoseg plan`: check → fingerprint → hardware → plan → split → preprocess.

Every step keeps an output that is current (decided by :func:`autoseg.store.freshness`) and redoes
one that is stale or missing; ``overwrite`` redoes them all.
"""
from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

from ..version import __version__
from ..errors import AutosegError, StaleArtifactError
from ..schemas import SCHEMA_VERSION, ConfigurationPlan, DatasetManifest, Fingerprint, HardwareBudget, Plans, Splits
from ..schemas import stable_hash
from ..store import RunStore, freshness, plans_hash

log = logging.getLogger(__name__)

PLAN_LOCK_HINT = ("`autoseg plan` or trainings are running on this work folder, and planning now could change the "
                  "plans and data they read; wait for them to end, or plan into another --workdir")


@dataclass(frozen=True)
class PlanResult:
    workdir: Path
    plans: Plans
    explained: list[str]  # every decision with its reason (= plans_explained.txt)


def _fingerprint(manifest: DatasetManifest, store: RunStore, *, num_workers: int | None, progress: bool,
                 overwrite: bool) -> Fingerprint:
    from ..fingerprint import extract_fingerprint

    path = store.wd.fingerprint_json
    old = None if overwrite else store.read_optional(Fingerprint, path)
    fresh = freshness(path, None if old is None else {"dataset_hash": old.dataset_hash},
                      {"dataset_hash": manifest.dataset_hash})
    if fresh.current:
        log.info("fingerprint.json is current (dataset unchanged): reusing it")
        return old
    if old is not None:
        log.info("dataset changed since fingerprint.json was written: extracting it again")
    fp = extract_fingerprint(manifest, num_workers=num_workers, progress=progress)
    store.save(fp, path)
    return fp


def fit_plans_to_gpu(plans: Plans, num_cases: int, measure) -> Plans:
    """Every configuration's patch and batch corrected by measured dry runs (``planning/measured.py``);
    the cascade takes 3d_fullres's (its extra input channels cost next to nothing)."""
    from ..planning.measured import GPU_MEMORY_HEADROOM, fit_to_measured_memory

    total = float(plans.hardware.gpu_total_memory_gb or 0.0)
    target = total * GPU_MEMORY_HEADROOM
    configs, warnings = dict(plans.configurations), list(plans.warnings)
    for name, cfg in plans.configurations.items():
        if cfg.previous_stage:
            continue
        log.info("dry run of %s on the GPU (target %.1f GB)", name, target)
        fit = fit_to_measured_memory(cfg, measure, target, num_cases=num_cases,
                                     proxy_estimate_gb=cfg.estimated_memory_gb)
        log.info("%s", fit.decision.reason)
        configs[name], warnings = fit.config, warnings + fit.warnings
    full = configs.get("3d_fullres")  # the cascade is 3d_fullres with the lowres prediction as extra channels
    for name, cfg in plans.configurations.items():
        if cfg.previous_stage and full is not None:
            configs[name] = replace(cfg, patch_size=list(full.patch_size), batch_size=full.batch_size,
                                    network=replace(full.network, in_channels=cfg.network.in_channels),
                                    estimated_memory_gb=full.estimated_memory_gb,
                                    estimated_gflop_per_iteration=full.estimated_gflop_per_iteration)
    return replace(plans, configurations=configs, warnings=warnings)


def _gpu_dry_run(plans: Plans, num_cases: int, measure) -> Plans:
    """Measured-memory planning on CUDA: with ``measure`` given (tests), or on a GPU that is here."""
    from ..schemas import Decision

    if plans.hardware.device != "cuda":
        return plans
    if measure is None:
        import torch

        if not torch.cuda.is_available():
            why = ("patch and batch come from the memory proxy alone: no CUDA device is visible here to measure "
                   "them on (plan on the GPU machine to have them measured)")
            log.warning("%s", why)
            return replace(plans, decisions=[*plans.decisions, Decision("measured_memory", None, "no_gpu_here", why)])
        present = torch.cuda.get_device_properties(0).total_memory / 1024 ** 3
        if (plans.hardware.gpu_total_memory_gb or 0.0) > present * 1.001:
            why = (f"patch and batch come from the memory proxy alone: the plan is for {plans.hardware.gpu_total_memory_gb:.0f} "
                   f"GB but this GPU has {present:.0f} GB, too little to measure on")
            log.warning("%s", why)
            return replace(plans, decisions=[*plans.decisions, Decision("measured_memory", None, "gpu_too_small", why)])
        from ..training.memory_probe import measure_peak_memory_gb as measure
    return fit_plans_to_gpu(plans, num_cases, measure)


def _plans(fp: Fingerprint, hardware: HardwareBudget, time_budget_s: float | None, planner_name: str,
           store: RunStore, *, overwrite: bool, plans_from: str | Path | None = None,
           gpu_dry_run: bool = True, measure_memory=None) -> Plans:
    from ..planning.registry import get_planner

    wd = store.wd
    if plans_from is not None:
        from ..planning.transfer import transfer_plans
        from ..schemas import load_json
        from ..store import load_plans

        source = Path(plans_from)
        if source.is_file():
            other = load_json(Plans, source)
        elif (source / "plans.json").is_file():
            other = load_plans(source)
        else:
            raise AutosegError(f"--plans-from {source}: no plans.json there; give the work folder of another autoseg "
                               f"run (or its plans.json)")
        new = transfer_plans(other, fp, source)
        if time_budget_s is not None:
            new = replace(new, time_budget_s=float(time_budget_s), time_budget_given=True)
        new = replace(new, autoseg_version=__version__, schema_version=SCHEMA_VERSION)
    else:
        planner = get_planner(planner_name)
        new = planner.plan(fp, hardware, time_budget_s=time_budget_s)
        new = replace(new, planner=planner_name, autoseg_version=__version__,
                      fingerprint_hash=stable_hash(fp), schema_version=SCHEMA_VERSION)
        if gpu_dry_run and planner.fit_to_measured_gpu_memory:
            new = _gpu_dry_run(new, len(fp.cases), measure_memory)
    if wd.plans_json.exists() and not overwrite:
        try:
            old = store.plans()
        except AutosegError as e:
            raise StaleArtifactError(f"{wd.plans_json} cannot be read ({e}); rerun `autoseg plan` with "
                                     f"--overwrite to plan again") from None

        def inputs(p: Plans) -> dict:
            return {"fingerprint_hash": p.fingerprint_hash, "planner": p.planner,
                    "overrides": p.hardware.overrides, "time_budget_s": p.time_budget_s}

        if freshness(wd.plans_json, inputs(old), inputs(new)).current:
            log.info("plans.json is current (same fingerprint, planner and budget): keeping it; "
                     "use --overwrite to plan again for this machine")
            return old
        if plans_hash(old) != plans_hash(new):
            trained = list(wd.results_root.glob("*/fold_*/checkpoint_*.pt")) if wd.results_root.exists() else []
            if trained:
                raise StaleArtifactError(
                    f"{wd.plans_json} was made from other inputs (planner '{old.planner}', "
                    f"fingerprint {old.fingerprint_hash}, budget {old.time_budget_s} s, overrides "
                    f"{old.hardware.overrides}) and {len(trained)} checkpoint(s) in {wd.results_root} were "
                    f"trained with it. Rerun `autoseg plan` with --overwrite to replace the plans (retrain "
                    f"afterwards), or use another --workdir.")
            log.info("planning inputs changed: replacing plans.json")
    store.save(new, wd.plans_json)
    return new


def _splits(case_ids: list[str], store: RunStore, *, splits_file: str | Path | None, seed: int,
            overwrite: bool) -> Splits:
    from ..training.splits import DEFAULT_N_FOLDS, load_user_splits, make_splits

    path = store.wd.splits_json
    ids_hash = stable_hash(sorted(case_ids))
    if splits_file is not None:
        splits = load_user_splits(splits_file, case_ids)
    else:
        old = None if overwrite else store.read_optional(Splits, path)
        if old is not None and old.source != "generated":
            load_user_splits(path, case_ids)  # a user's file: still valid for these cases?
            log.info("splits.json (%s) is current: keeping it", old.source)
            return old
        if freshness(path, None if old is None else {"case_ids_hash": old.case_ids_hash},
                     {"case_ids_hash": ids_hash}).current:
            log.info("splits.json is current: keeping it")
            return old
        if old is not None:
            log.info("the training cases changed: making new splits")
        if len(case_ids) < 2:
            raise AutosegError(f"the dataset has {len(case_ids)} training case(s); cross-validation needs at least 2 "
                               f"(one to train on, one to validate); add training cases")
        n_folds = min(DEFAULT_N_FOLDS, len(case_ids))
        if n_folds < DEFAULT_N_FOLDS:
            log.warning("only %d training cases: %d-fold cross-validation (one validation case per fold) instead "
                        "of %d folds; give --splits FILE for other folds", len(case_ids), n_folds, DEFAULT_N_FOLDS)
        splits = make_splits(case_ids, n_folds=n_folds, seed=seed)
    splits = replace(splits, case_ids_hash=ids_hash)
    store.save(splits, path)
    return splits


def preprocessing_groups(plans: Plans, configurations: Collection[str] | None = None) -> dict[str, ConfigurationPlan]:
    """One configuration per data_identifier: configurations that share preprocessing share a folder.
    ``configurations``: only the data these need (default: every configuration's)."""
    groups: dict[str, ConfigurationPlan] = {}
    for cfg in plans.configurations.values():
        if configurations is None or cfg.name in configurations:
            groups.setdefault(cfg.data_identifier, cfg)
    return groups


def _preprocess(manifest: DatasetManifest, plans: Plans, store: RunStore, configurations: Collection[str] | None, *,
                num_workers: int | None, progress: bool, overwrite: bool = False) -> None:
    from ..preprocessing.dataset import preprocess_dataset

    for data_id, cfg in preprocessing_groups(plans, configurations).items():
        log.info("preprocessing for %s (%s)", cfg.name, data_id)
        preprocess_dataset(manifest, cfg, store.wd, num_workers=num_workers, progress=progress, overwrite=overwrite)


def preprocess_planned(workdir: str | Path, configurations: Collection[str], *, num_workers: int | None = None,
                       progress: bool = True) -> None:
    """The preprocessed data of ``configurations``, from the work folder's plans and dataset check (written by
    :func:`plan_dataset`, e.g. with ``preprocess=()``). Cases already current are kept. `autoseg run` plans
    first and then preprocesses only what it chose to train: a configuration it does not train (often
    3d_lowres) costs no time of its budget."""
    from ..locks import exclusive

    store = RunStore(workdir)
    plans = store.plans()
    unknown = sorted(set(configurations) - set(plans.configurations))
    if unknown:
        raise AutosegError(f"{store.wd.plans_json} has no configuration {', '.join(unknown)} (it has "
                           f"{', '.join(plans.configurations)}); run `autoseg plan DATASET --workdir {store.root}`")
    with exclusive(store.wd.plan_lock, f"work folder {store.root}", hint=PLAN_LOCK_HINT):
        _preprocess(store.manifest(), plans, store, configurations, num_workers=num_workers, progress=progress)


def plan_dataset(dataset_dir: str | Path, workdir: str | Path, *, planner: str = "default",
                 device: str | None = None, gpu_memory_gb: float | None = None,
                 time_budget_s: float | None = None, splits_file: str | Path | None = None,
                 split_seed: int = 12345, num_workers: int | None = None, progress: bool = True,
                 overwrite: bool = False, measure_cpu: bool = True, cpu_gflops: float | None = None,
                 remeasure_cpu: bool = False, plans_from: str | Path | None = None, gpu_dry_run: bool = True,
                 measure_memory=None, preprocess: Collection[str] | None = None) -> PlanResult:
    """validate → fingerprint → plan → split → preprocess. Safe to re-run: current outputs are kept.

    ``preprocess``: the configurations whose data to preprocess (default all; ``()`` none, for a caller
    that decides first and then calls :func:`preprocess_planned`).

    ``time_budget_s``: wall-clock seconds per training, recorded once in plans.json (on a CPU without
    it the planner records the default it assumed; training uses the same). Nothing is written to
    ``workdir`` when the dataset check fails. On CUDA, patch and batch are corrected by measured dry runs
    (``gpu_dry_run``; ``measure_memory(config) -> peak GB`` replaces the GPU measurement, for tests).
    """
    from ..atomic import atomic_write_text
    from ..data.dataset import load_dataset
    from ..data.file_digests import FileDigests
    from ..locks import exclusive
    from ..hardware import detect_hardware, resolve_device
    from ..planning.base import check_time_budget
    from ..planning.explain import explain_plans
    from ..planning.registry import get_planner

    get_planner(planner)  # fail on an unknown name or a bad budget before any work
    check_time_budget(time_budget_s)
    log.info("checking dataset %s", dataset_dir)
    store = RunStore(workdir)
    digests = FileDigests(store.wd.file_digests_json)
    manifest = load_dataset(dataset_dir, num_workers=num_workers or 1, progress=progress, digests=digests)
    log.info("dataset OK: %d training cases, %d channel(s), labels %s", len(manifest.cases),
             manifest.num_channels, manifest.labels)

    # one `autoseg plan` at a time, and none while trainings read the plan and the preprocessed data
    with exclusive(store.wd.plan_lock, f"work folder {store.root}", hint=PLAN_LOCK_HINT):
        store.save(manifest, store.wd.manifest_json)
        digests.save()
        fp = _fingerprint(manifest, store, num_workers=num_workers, progress=progress, overwrite=overwrite)
        # the splits before the plans: a dataset that cannot be split leaves no plans.json behind
        _splits([c.case_id for c in manifest.cases], store, splits_file=splits_file, seed=split_seed,
                overwrite=overwrite)
        speed = None
        if measure_cpu and cpu_gflops is None and resolve_device(device, gpu_memory_gb) == "cpu":
            from ..training.speed_probe import cpu_speed_for_planning

            speed, where = cpu_speed_for_planning(remeasure=remeasure_cpu)
            log.info("CPU training speed %s", where)
        hardware = detect_hardware(device=device, gpu_memory_gb=gpu_memory_gb, cpu_speed=speed, cpu_gflops=cpu_gflops)
        plans = _plans(fp, hardware, time_budget_s, planner, store, overwrite=overwrite, plans_from=plans_from,
                       gpu_dry_run=gpu_dry_run, measure_memory=measure_memory)
        explained = explain_plans(plans)
        atomic_write_text(store.wd.plans_explained_txt, "\n".join(explained) + "\n")
        _preprocess(manifest, plans, store, preprocess, num_workers=num_workers, progress=progress,
                    overwrite=overwrite)
        return PlanResult(workdir=store.root, plans=plans, explained=explained)
