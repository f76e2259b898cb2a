"""Choose what to predict with: every configuration and ensemble scored on the cross-validation.

``find_best`` (what ``autoseg find-best`` calls) merges the validation predictions of all folds
(each case predicted by the fold that held it out), scores every complete configuration and every
ensemble of them by the mean foreground Dice, learns postprocessing for the winner and writes
``RUN/results/selection.json`` (:class:`autoseg.schemas.Selection`).

Beyond nnU-Net (pairs only, cost ignored): all subsets are tried when there are at most 4
configurations, each candidate carries its inference cost (sum of the members' measured validation
seconds per case), equal Dice goes to fewer members and then to the cheaper candidate, and the
postprocessing includes a learned minimum component size per label.
"""
from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AutosegError
from .schemas import SCHEMA_VERSION, Candidate, FoldSummary, LabelSpec, Selection, Splits, save_json
from .store import RunStore, freshness, plans_hash, validation_hash
from .workdir import Workdir

log = logging.getLogger(__name__)

ALL_SUBSETS_UP_TO = 4  # with at most this many configurations every subset is an ensemble candidate


# --------------------------------------------------------------------------- what is there

def _train_command(wd: Workdir, configuration: str, fold: int) -> str:
    return f"autoseg train --workdir {wd.root} -c {configuration} --fold {fold}"


def _missing_folds(wd: Workdir, configuration: str, splits: Splits, folds: Sequence[int],
                   file_ending: str) -> tuple[list[int], bool]:
    """(folds whose validation outputs are incomplete, whether all probability files are there)."""
    missing, probs = [], True
    for f in folds:
        val = splits.folds[f].val
        vdir = wd.validation_dir(configuration, f)
        if not wd.validation_summary_json(configuration, f).exists() or \
                not all((vdir / f"{c}{file_ending}").exists() for c in val):
            missing.append(f)
        elif not all(wd.validation_probabilities(configuration, f, c).exists() for c in val):
            probs = False
    return missing, probs


def _seconds_per_case(configuration: str, summaries: Sequence[FoldSummary | None]) -> float:
    """Mean measured validation seconds per case over the folds' summaries (NaN when none was measured)."""
    values: list[float] = []
    for summary in summaries:
        if summary is None:
            continue
        if summary.seconds_per_case:
            values.extend(float(v) for v in summary.seconds_per_case.values())
        elif summary.mean_seconds_per_case is not None:
            values.append(float(summary.mean_seconds_per_case))
    if not values:
        log.warning("%s: no validation timing in its summaries (predictions were reused); its cost is "
                    "unknown", configuration)
        return float("nan")
    return float(np.mean(values))


def _ensembles(configs: Sequence[str]) -> list[tuple[str, ...]]:
    sizes = range(2, len(configs) + 1) if len(configs) <= ALL_SUBSETS_UP_TO else [2]
    return [tuple(c) for n in sizes for c in itertools.combinations(configs, n)]


# --------------------------------------------------------------------------- current?

def _selection_inputs(plans_hash_: str, folds: list[int], configurations: Sequence[str], vhash: str) -> dict:
    return {"plans_hash": plans_hash_, "folds": list(folds), "configurations": sorted(configurations),
            "validation_hash": vhash}


def _current_selection(store: RunStore, expected: dict) -> Selection | None:
    old = store.selection()
    recorded = None if old is None else _selection_inputs(
        old.plans_hash, old.folds, {c for cand in old.candidates for c in cand.configurations}, old.validation_hash)
    fresh = freshness(store.wd.selection_json, recorded, expected)
    if fresh.current:
        log.info("%s is current: keeping it (use overwrite to select again)", store.wd.selection_json)
        return old
    if old is not None:
        log.info("%s: selecting again", fresh.message())
    return None


# --------------------------------------------------------------------------- scoring

class _CVCases(Mapping):
    """Lazy case id -> (segmentation, reference, spacing_zyx) over the merged CV predictions."""

    def __init__(self, segmentation: Callable[[str, tuple[int, ...]], np.ndarray], references: Mapping[str, str]):
        self._seg, self._refs = segmentation, references

    def __getitem__(self, case_id: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
        from .data.image_io import read_label

        ref, geom = read_label(self._refs[case_id])
        return self._seg(case_id, ref.shape), ref, geom.spacing_zyx

    def __iter__(self) -> Iterator[str]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)


def _read_prediction(path: Path, shape: tuple[int, ...], case_id: str) -> np.ndarray:
    from .data.image_io import read_label

    if not path.exists():
        raise AutosegError(f"case {case_id}: validation prediction {path} disappeared while selecting; "
                           f"rerun the training command of that fold to predict it again")
    seg, _ = read_label(path)
    if seg.shape != shape:
        raise AutosegError(f"case {case_id}: validation prediction {path} has shape (Z, Y, X) {seg.shape} "
                           f"but the reference label has {shape}; predict it again at the original geometry")
    return seg


def _score_candidates(wd: Workdir, singles: list[str], ensembles: list[tuple[str, ...]],
                      fold_of_case: dict[str, int], references: dict[str, str], file_ending: str,
                      fg: list, progress: bool, num_workers: int = 1, spec: LabelSpec | None = None,
                      names: dict[str, str] | None = None) -> dict[tuple[str, ...], dict[str, Any]]:
    """Per candidate (tuple of configurations) the :func:`evaluation.summarize` of the merged CV;
    the cases are scored in ``num_workers`` forked processes when that is > 1."""
    from tqdm import tqdm

    from .data.image_io import read_label
    from .evaluation import evaluate_case, summarize
    from .inference.ensemble import segmentations_of_ensembles
    from .parallel import fork_map

    members = sorted({c for e in ensembles for c in e})
    ignore = spec.ignore_label if spec is not None else None

    def score(cid: str) -> dict[tuple[str, ...], Any]:
        fold = fold_of_case[cid]
        ref, geom = read_label(references[cid])
        out: dict[tuple[str, ...], Any] = {}
        for c in singles:
            seg = _read_prediction(wd.validation_dir(c, fold) / f"{cid}{file_ending}", ref.shape, cid)
            out[(c,)] = evaluate_case(seg, ref, fg, geom.spacing_zyx, ignore_label=ignore)
        if ensembles:
            paths = {c: wd.validation_probabilities(c, fold, cid) for c in members}
            for e, seg in segmentations_of_ensembles(paths, ensembles, spec=spec).items():
                if seg.shape != ref.shape:
                    raise AutosegError(f"case {cid}: probabilities of {', '.join(e)} have spatial shape "
                                       f"{seg.shape} but the reference label has {ref.shape}; predict the "
                                       f"case again at the original geometry")
                out[e] = evaluate_case(seg, ref, fg, geom.spacing_zyx, ignore_label=ignore)
        return out

    case_ids = list(fold_of_case)
    per_case: dict[tuple[str, ...], dict[str, Any]] = {(c,): {} for c in singles}
    per_case.update({e: {} for e in ensembles})
    with tqdm(total=len(case_ids), desc="scoring candidates", unit="case", disable=not progress) as bar:
        results = fork_map(score, case_ids, num_workers, on_result=bar.update)
    for cid, scores in zip(case_ids, results):
        for candidate, result in scores.items():
            per_case[candidate][cid] = result
    return {k: summarize(v, fg, names) for k, v in per_case.items()}


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def _rank_key(c: Candidate) -> tuple:
    dice = -c.foreground_dice if c.foreground_dice == c.foreground_dice else math.inf
    cost = c.seconds_per_case if c.seconds_per_case == c.seconds_per_case else math.inf
    return dice, len(c.configurations), cost, c.name


# --------------------------------------------------------------------------- find_best

def find_best(workdir: str | Path, *, configurations: list[str] | None = None, folds: list[int] | None = None,
              progress: bool = True, overwrite: bool = False, num_workers: int | None = None) -> Selection:
    """Score every complete configuration and ensemble on the merged CV, pick the best, learn postprocessing.

    Args:
        workdir: the work folder (plans.json, splits.json, dataset_manifest.json, results/).
        configurations: candidates to consider (default: every configuration in plans.json).
        folds: folds whose validation predictions are merged (default: all folds in splits.json).
        progress: tqdm over cases.
        overwrite: select again even when selection.json is current.
        num_workers: processes (forked) that score the cases and learn the postprocessing; None or
            1: in this process. The result is the same either way.

    A configuration without all its folds' validation outputs is skipped (logged with the
    ``autoseg train`` commands that complete it); with none complete an AutosegError lists them.
    Writes ``results/selection.json`` atomically and returns it. An existing selection.json is
    kept when its plans hash, folds, configurations and fold summaries (validation_hash) match.
    """
    from .inference.ensemble import iter_cv_ensemble_segmentations
    from .data.labels import scored_items
    from .inference.postprocess_learning import determine_postprocessing, foreground_mean
    from .parallel import fork_map

    store = RunStore(workdir)
    wd = store.wd
    plans = store.plans()
    manifest = store.manifest()
    splits = store.splits()
    names = list(plans.configurations) if configurations is None else \
        list(dict.fromkeys(plans.configuration(c).name for c in configurations))  # unknown: "did you mean"
    n_folds = len(splits.folds)
    folds = list(range(n_folds)) if folds is None else sorted({int(f) for f in folds})
    bad = [f for f in folds if not 0 <= f < n_folds]
    if bad or not folds:
        raise AutosegError(f"fold(s) {bad or folds} not in {wd.splits_json}, which has folds 0..{n_folds - 1}; "
                           f"pass folds from that range")

    complete, with_probs, commands = [], [], []
    for c in names:
        missing, probs = _missing_folds(wd, c, splits, folds, manifest.file_ending)
        if missing:
            cmds = [_train_command(wd, c, f) for f in missing]
            commands += cmds
            log.warning("skipping %s: validation of fold(s) %s missing; complete it with:\n  %s", c,
                        ", ".join(map(str, missing)), "\n  ".join(cmds))
            continue
        complete.append(c)
        if probs:
            with_probs.append(c)
        else:
            log.warning("%s has no probability files for every validation case: it is scored alone but "
                        "not ensembled (train/validate it again with probabilities saved)", c)
    if not complete:
        raise AutosegError(f"no configuration has validation results for all of folds {folds} in "
                           f"{wd.results_root}; expected validation/summary.json and every held-out "
                           f"case's prediction per fold. Run:\n  " + "\n  ".join(commands))

    used = [(c, f) for c in complete for f in folds]
    stale = {c for c, *_ in store.stale_folds(plans, used)}
    others = " ".join(c for c in complete if c not in stale)
    store.refuse_stale_folds(plans, used, purpose="by find-best", alternative=(
        f"or leave them out: `autoseg find-best --workdir {wd.root} -c {others}`" if others else ""))
    phash = plans_hash(plans)
    fold_summaries = {(c, f): store.fold_summary(c, f) for c, f in used}  # read once: the hash and the timings
    vhash = validation_hash(fold_summaries.values())
    if not overwrite:
        old = _current_selection(store, _selection_inputs(phash, folds, complete, vhash))
        if old is not None:
            return old

    fold_of_case: dict[str, int] = {}
    for f in folds:
        for cid in splits.folds[f].val:
            fold_of_case.setdefault(cid, f)
    cases = {c.case_id: c for c in manifest.cases}
    unknown = [cid for cid in fold_of_case if cid not in cases or cases[cid].label is None]
    if unknown:
        raise AutosegError(f"{wd.splits_json} names validation case(s) without a label in the dataset "
                           f"manifest: {', '.join(unknown[:10])}; rerun `autoseg plan --overwrite` so the "
                           f"splits match the dataset")
    references = {cid: str(cases[cid].label) for cid in fold_of_case}
    spec = manifest.label_spec
    fg, names = scored_items(spec)  # foreground labels, or regions
    ensembles = _ensembles(with_probs)
    log.info("scoring %d configuration(s) and %d ensemble(s) on %d CV cases (folds %s)", len(complete),
             len(ensembles), len(fold_of_case), folds)
    workers = max(1, int(num_workers or 1))
    summaries = _score_candidates(wd, complete, ensembles, fold_of_case, references, manifest.file_ending,
                                  fg, progress, workers, spec=spec, names=names)
    seconds = {c: _seconds_per_case(c, [fold_summaries[c, f] for f in folds]) for c in complete}
    candidates = []
    for members, s in summaries.items():
        candidates.append(Candidate(
            name="+".join(members), configurations=list(members),
            foreground_dice=_nan(s["foreground_mean"]["dice"]),
            dice_per_class={k: _nan(v["dice"]) for k, v in s["per_class"].items()},
            seconds_per_case=float(sum(seconds[m] for m in members))))
    candidates.sort(key=_rank_key)
    winner = candidates[0]

    if len(winner.configurations) == 1:
        cfg = winner.configurations[0]

        def segmentation(cid: str, shape: tuple[int, ...]) -> np.ndarray:
            return _read_prediction(wd.validation_dir(cfg, fold_of_case[cid]) / f"{cid}{manifest.file_ending}",
                                    shape, cid)
    else:
        def segmentation(cid: str, shape: tuple[int, ...]) -> np.ndarray:
            return next(iter_cv_ensemble_segmentations(wd, winner.configurations, {cid: fold_of_case[cid]},
                                                       spec))[1]

    steps, _, after = determine_postprocessing(_CVCases(segmentation, references), fg,
                                               map_cases=lambda fn, ids: fork_map(fn, ids, workers),
                                               ignore_label=spec.ignore_label)
    selection = Selection(
        schema_version=SCHEMA_VERSION, plans_hash=phash, folds=folds, candidates=candidates,
        winner=winner.name, winner_configurations=list(winner.configurations), postprocessing=steps,
        foreground_dice_before_postprocessing=winner.foreground_dice,
        foreground_dice_after_postprocessing=foreground_mean(after), dice_per_class_after_postprocessing=after,
        validation_hash=vhash)
    save_json(selection, wd.selection_json)
    log.info("winner %s: foreground Dice %.4f (%.4f after %d postprocessing step(s)); wrote %s", winner.name,
             winner.foreground_dice, selection.foreground_dice_after_postprocessing, len(steps), wd.selection_json)
    return selection


# --------------------------------------------------------------------------- report

def _f(v: float, fmt: str = ".4f") -> str:
    return "-" if v != v else format(v, fmt)


def format_ranking(selection: Selection) -> str:
    """A readable ranking: rank, candidate, foreground Dice, Dice per class, s/case (winner marked with *),
    then the winner's postprocessing steps with their reasons."""
    labels = sorted({k for c in selection.candidates for k in c.dice_per_class}, key=lambda k: (len(k), k))
    name_w = max([len("candidate")] + [len(c.name) for c in selection.candidates])
    header = (f"{'rank':>5}  {'candidate':<{name_w}}  {'fg Dice':>8}  "
              + "".join(f"{'Dice ' + k:>9}  " for k in labels) + f"{'s/case':>8}")
    lines = [f"Cross-validation ranking (folds {', '.join(map(str, selection.folds))}):", header,
             "-" * len(header)]
    for i, c in enumerate(selection.candidates, 1):
        mark = "*" if c.name == selection.winner else " "
        lines.append(f"{mark}{i:>4}  {c.name:<{name_w}}  {_f(c.foreground_dice):>8}  "
                     + "".join(f"{_f(c.dice_per_class.get(k, float('nan'))):>9}  " for k in labels)
                     + f"{_f(c.seconds_per_case, '.2f'):>8}")
    lines.append("")
    members = selection.winner_configurations
    lines.append(f"winner: {selection.winner}" + (f" (ensemble of {', '.join(members)}: probabilities averaged)"
                                                   if len(members) > 1 else ""))
    if selection.postprocessing:
        lines.append(f"postprocessing: foreground Dice {_f(selection.foreground_dice_before_postprocessing)} -> "
                     f"{_f(selection.foreground_dice_after_postprocessing)}")
        for i, s in enumerate(selection.postprocessing, 1):
            what = s.kind
            if s.min_size_voxels:
                what += " " + ", ".join(f"label {k} < {v} voxels" for k, v in s.min_size_voxels.items())
            elif s.labels:
                what += " label(s) " + ", ".join(map(str, s.labels))
            lines.append(f"  {i}. {what}: {s.reason}")
    else:
        lines.append("postprocessing: none (no step improved the cross-validation Dice without making a "
                     "class worse)")
    return "\n".join(lines)
