"""Use case `autoseg export`: the selected model of a work folder as one zip that predicts anywhere
(`autoseg predict --model model.zip`), with no patient data in it.

What goes in (format: :mod:`autoseg.model.model_zip`): the selection's winner and its previous stages
(cascade inputs) from plans.json, selection.json, the dataset's labels, channels and file ending, and
the weights of every selected fold as safetensors (tensors only: loading them can never run code);
with ``onnx`` also each network as ONNX. What stays out: case ids and case files, the fingerprint,
the splits, validation outputs, training logs, the machine record and every local path (see
:mod:`.export_privacy`).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import AutosegError
from ..schemas import Plans, from_dict, to_dict
from ..store import RunStore, plans_hash
from ..version import __version__
from .find_best import FindBestResult, find_best

log = logging.getLogger(__name__)

EXPORT_CHECKPOINTS = ("final", "best")


@dataclass(frozen=True)
class ExportResult:
    output: Path
    configurations: list[str]  # the winner's (ensembled)
    stages: list[str]  # every configuration held, previous stages first
    folds: list[str]
    checkpoint: str
    onnx: bool
    member_bytes: dict[str, int]
    scrubbed_strings: int  # free-text strings replaced because they named a case or a local path
    find_best: FindBestResult | None = None  # when it had to run first

    @property
    def total_bytes(self) -> int:
        return sum(self.member_bytes.values())


def _inference_contract(plans: Plans, stages: list[str], onnx: bool) -> dict[str, dict]:
    """Per configuration: what a user of the networks outside autoseg must do around them."""
    from ..model.model_zip import ONNX_INPUT, ONNX_OUTPUT

    out = {}
    for name in stages:
        cfg = plans.configuration(name)
        out[name] = {
            "input": {"name": ONNX_INPUT if onnx else None, "dtype": "float32",
                      "shape": ["batch", cfg.network.in_channels, *cfg.patch_size],
                      "dynamic_axes": ["batch", *(f"spatial_{a}" for a in range(len(cfg.patch_size)))],
                      "preprocessing": f"plans.json configurations.{name}: crop to the nonzero box, normalization "
                                       f"per channel, resampling to spacing_zyx_mm, transpose_forward"
                                       + (f"; then the {cfg.previous_stage} segmentation appended one-hot per "
                                          f"foreground label" if cfg.previous_stage else "")},
            "output": {"name": ONNX_OUTPUT if onnx else None, "dtype": "float32",
                       "shape": ["batch", cfg.network.num_classes, *cfg.patch_size], "kind": "logits"},
            "sliding_window": {"patch_size": list(cfg.patch_size), "step_size": 0.5,
                               "gaussian_sigma_scale": 0.125, "gaussian_peak": 10.0,
                               "mirror_axes": list(cfg.mirror_axes), "folds": "logits averaged"},
            "postprocessing": "logits divided by the summed Gaussian weights, transpose_backward, softmax (sigmoid "
                              "per region when plans.json has regions), resampled to the original grid, argmax "
                              "(regions painted in regions_class_order), then selection.json postprocessing",
        }
    return out


def export_model(workdir: str | Path, output: str | Path, *, checkpoint: str = "final", onnx: bool = False,
                 progress: bool = True, num_workers: int | None = None) -> ExportResult:
    """Write the work folder's selected model to ``output`` (module doc). find-best runs first when there
    is no selection; a stale selection, a missing checkpoint or a fold trained with other plans stops it
    before anything is written."""
    import safetensors.torch
    import torch

    from ..inference.cascade_predict import stage_order
    from ..inference.checks import unusable_checkpoint
    from ..model.checkpoint import CheckpointError, load_checkpoint
    from ..model.model_zip import (DATASET_JSON, FORMAT, FORMAT_VERSION, PLANS_JSON, SELECTION_JSON, MemberRecord,
                                   ModelDataset, ModelManifest, ModelNetwork, json_bytes, onnx_member, sha256_hex,
                                   weights_member, write_model_zip)
    from ..model.network import build_network
    from ..model.onnx_backend import ONNX_OPSET, export_onnx
    from .export_privacy import find_private, private_pattern, scrub

    if checkpoint not in EXPORT_CHECKPOINTS:
        raise AutosegError(f"checkpoint '{checkpoint}' cannot be exported; expected one of "
                           f"{', '.join(EXPORT_CHECKPOINTS)}")
    store = RunStore(workdir)
    plans = store.plans()
    ran = None
    if not store.wd.selection_json.exists():
        log.info("no selection yet: running find-best first")
        ran = find_best(workdir, progress=progress, num_workers=num_workers)
    selection = store.selection_for(plans)
    assert selection is not None  # selection_for raises otherwise
    stages = stage_order(plans, selection.winner_configurations)
    folds = [str(f) for f in selection.folds]
    missing = [(c, f) for c in stages for f in folds if not store.wd.checkpoint(c, f, checkpoint).is_file()]
    if missing:
        cmds = "\n".join(f"  autoseg train --workdir {store.root} -c {c} --fold {f}" for c, f in missing)
        raise AutosegError(f"{len(missing)} network(s) of the selection {selection.winner} (folds {folds}) have no "
                           f"checkpoint_{checkpoint}.pt: {', '.join(f'{c} fold {f}' for c, f in missing)}; train "
                           f"them:\n{cmds}" + ("\nor export --checkpoint final" if checkpoint == "best" else ""))
    store.refuse_stale_folds(plans, [(c, f) for c in stages for f in folds], purpose="to export")

    dataset = store.manifest()
    case_ids = [c.case_id for c in (*dataset.cases, *dataset.test_cases)]
    local_paths = [str(store.root.resolve()), dataset.root, str(Path.home()),
                   *{str(Path(p).parent) for c in (*dataset.cases, *dataset.test_cases) for p in c.images}]
    private = private_pattern(case_ids, local_paths)

    members: dict[str, bytes] = {}
    networks: list[ModelNetwork] = []
    for name in stages:
        cfg = plans.configuration(name)
        for fold in folds:
            path = store.wd.checkpoint(name, fold, checkpoint)
            network = build_network(cfg.network)
            try:
                ckpt = load_checkpoint(path, map_location="cpu", network=network)
            except CheckpointError as e:
                raise AutosegError(unusable_checkpoint(e, name, fold, store.root, checkpoint)) from None
            state = {k: v.detach().to("cpu").contiguous() for k, v in ckpt["model"].items()}
            members[weights_member(name, fold)] = safetensors.torch.save(state)
            onnx_name = None
            if onnx:
                network.load_state_dict(state)
                onnx_name = onnx_member(name, fold)
                members[onnx_name] = export_onnx(network, cfg)
            precision = (ckpt.get("state") or {}).get("precision")
            networks.append(ModelNetwork(name, fold, weights_member(name, fold), onnx_name,
                                         precision if isinstance(precision, str) else None))
            del ckpt, state, network
            log.info("exported %s fold %s%s", name, fold, " (+ ONNX)" if onnx else "")

    # plans: the configurations needed, without the dataset-level decisions, warnings and machine record
    kept = replace(plans, configurations={c: plans.configurations[c] for c in stages}, decisions=[], warnings=[],
                   hardware=replace(plans.hardware, cpu_speed_source="", overrides={}))
    plans_data, n_plans = scrub(to_dict(kept), private)
    exported_plans = from_dict(Plans, plans_data, "exported plans.json")
    selection_data, n_selection = scrub(to_dict(replace(selection, plans_hash=plans_hash(exported_plans))), private)
    model_dataset = ModelDataset(
        name=dataset.name, channel_names=dict(dataset.channel_names), labels=dict(dataset.labels),
        file_ending=dataset.file_ending, files_per_case=len(dataset.cases[0].images) if dataset.cases else 1,
        ndim=dataset.ndim, regions=dict(dataset.regions), regions_class_order=list(dataset.regions_class_order),
        ignore_label=dataset.ignore_label)
    dataset_data, n_dataset = scrub(to_dict(model_dataset), private)
    for member, data in ((PLANS_JSON, to_dict(exported_plans)), (SELECTION_JSON, selection_data),
                         (DATASET_JSON, dataset_data)):
        members[member] = json_bytes(data)
    manifest = ModelManifest(
        format=FORMAT, format_version=FORMAT_VERSION, autoseg_version=__version__,
        torch_version=str(torch.__version__), checkpoint=checkpoint, dataset_name=dataset.name,
        configurations=list(selection.winner_configurations), stages=stages, folds=folds,
        plans_hash=plans_hash(exported_plans), source_plans_hash=plans_hash(plans), networks=networks,
        members={n: MemberRecord(sha256_hex(b), len(b)) for n, b in members.items()},
        onnx_opset=ONNX_OPSET if onnx else None, inference=_inference_contract(exported_plans, stages, onnx))
    leaks = find_private(to_dict(manifest), private, "autoseg_model.json")
    for member, data in members.items():
        leaks += find_private(member, private, "member name")
        if member.endswith(".json"):
            leaks += find_private(json.loads(data), private, member)
    if leaks:  # scrubbed above: only a key or a structural field can still hold one
        raise AutosegError(f"not exported: the model would name a training case or a local path ({'; '.join(leaks[:5])}"
                           f"); this is a bug in autoseg export, please report it with these names removed")
    write_model_zip(output, manifest, members)
    scrubbed = n_plans + n_selection + n_dataset
    if scrubbed:
        log.info("%d free-text string(s) of the plans or selection named a training case or a local path and were "
                 "replaced", scrubbed)
    return ExportResult(output=Path(output).resolve(), configurations=list(selection.winner_configurations),
                        stages=stages, folds=folds, checkpoint=checkpoint, onnx=onnx,
                        member_bytes={n: len(b) for n, b in members.items()}, scrubbed_strings=scrubbed,
                        find_best=ran)
