"""Predict new images with trained networks: the Python API behind ``autoseg predict``.

:class:`Predictor` loads the networks of one or more configurations (one per fold) once, then
predicts arrays held in memory (:meth:`Predictor.predict_array`) or image files
(:meth:`Predictor.predict_file`). Per configuration the folds' logits are averaged (in the
preprocessed space, like nnU-Net); across configurations the probabilities at the original
geometry are averaged; then argmax and, when the selection's winner is used, its postprocessing.

Axis order: images ``(C, Z, Y, X)``, probabilities ``(K, Z, Y, X)``, segmentations and
uncertainty ``(Z, Y, X)``, in the original array order (see :mod:`autoseg.schemas`).

Uncertainty: the ensemble members are the (configuration, fold) networks. Each member's
probabilities ``p_m`` are computed on their own and compared with the ensemble's final
probabilities ``p`` (the ones the segmentation is the argmax of) by the total-variation distance
``TV(p_m, p) = 0.5 * sum_k |p_m[k] - p[k]|`` in [0, 1]. The uncertainty of a voxel is the mean of
``TV`` over the members: 0 where every member agrees with the ensemble, towards 1 where members
put their mass on different classes. With a single member it is 0 everywhere.
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import AutosegError, StaleArtifactError
from ..schemas import (SCHEMA_VERSION, CaseFiles, CaseProperties, ConfigurationPlan, Geometry,
                       PostprocessingStep, Selection, load_json)
from ..workdir import CHECKPOINT_KINDS, Workdir
from .export import logits_to_original_probabilities, probabilities_to_segmentation
from .export import save_probabilities as _save_probabilities_npz
from .sliding_window import predict_sliding_window
from .validation import predict_preprocessed_case

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEFAULT_STEP_SIZE, FAST_STEP_SIZE = 0.5, 0.75  # --fast: 0.75 and no mirroring (nnU-Net maintainers' advice)
_SLAB_VOXELS = 1 << 22  # uncertainty is reduced in slabs of ~4M voxels along axis 0


@dataclass
class PredictionResult:
    """One predicted case at the input's geometry.

    ``segmentation`` (Z, Y, X) uint8 (uint16 above 256 classes); ``probabilities`` (K, Z, Y, X)
    float32 summing to 1 over K, or None; ``uncertainty`` (Z, Y, X) float32 in [0, 1], or None.
    """

    segmentation: np.ndarray
    probabilities: np.ndarray | None = None
    uncertainty: np.ndarray | None = None


def _split_ending(out_path: str | Path) -> tuple[Path, str, str]:
    from ..data.image_io import ending_of

    out_path = Path(out_path)
    ending = ending_of(out_path)
    return out_path.parent, out_path.name[: len(out_path.name) - len(ending)], ending


def probabilities_path(out_path: str | Path) -> Path:
    """Where :meth:`Predictor.predict_file` writes the probabilities of ``out_path``: ``<case>.npz``."""
    folder, case, _ = _split_ending(out_path)
    return folder / f"{case}.npz"


def uncertainty_path(out_path: str | Path) -> Path:
    """``<case>_uncertainty<ending>`` next to ``out_path``; PNG and BMP store 8-bit values only, so
    the float uncertainty of a PNG/BMP prediction is written as ``<case>_uncertainty.nii.gz``."""
    from ..data.image_io import EIGHT_BIT_ENDINGS

    folder, case, ending = _split_ending(out_path)
    return folder / f"{case}_uncertainty{'.nii.gz' if ending in EIGHT_BIT_ENDINGS else ending}"


def _resolve_precision(requested: str, device: torch.device, recorded: list[str | None]) -> str:
    """``auto``: fp16 on CUDA; elsewhere the precision the checkpoints were trained with (fp32 if
    they disagree, record none, or record fp16, which needs CUDA)."""
    if requested not in PRECISIONS:
        raise AutosegError(f"precision '{requested}' is unknown; expected one of {', '.join(PRECISIONS)}")
    if requested == "fp16" and device.type != "cuda":
        raise AutosegError(f"precision fp16 needs a CUDA device, found device '{device}'; use bf16 or fp32")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and len(set(recorded)) == 1 and recorded[0] in ("fp32", "bf16"):
        return str(recorded[0])
    return "fp32"


class Predictor:
    """Networks of a trained work folder, loaded once, ready to predict images.

    Args:
        workdir: the work folder (``autoseg plan`` / ``autoseg train`` wrote it).
        configurations: configurations to ensemble; None reads ``results/selection.json``
            (``autoseg find-best``) and uses its winner, folds and postprocessing.
        folds: folds to use per configuration (ints, or "all"); None: the selection's folds, or
            every fold of splits.json; with ``fast`` only the first of them.
        device: "cpu", "cuda", "cuda:N"; None picks CUDA when present.
        precision: "auto" (fp16 on CUDA; on the CPU the precision recorded in the checkpoints,
            fp32 if none), "fp32", "bf16" or "fp16" (CUDA only).
        fast: no mirroring, step 0.75, one fold per configuration (unless ``folds`` is given).
        step_size: sliding-window step as a fraction of the patch (None: 0.5, or 0.75 with fast).
        mirror: mirror test-time augmentation (None: on unless fast).
        checkpoint: "final", "best" or "latest".
        postprocessing: apply the selection's postprocessing when the selection's winner is used.
    """

    def __init__(self, workdir: str | Path, *, configurations: Sequence[str] | None = None,
                 folds: Sequence[int | str] | None = None, device: str | torch.device | None = None,
                 precision: str = "auto", fast: bool = False, step_size: float | None = None,
                 mirror: bool | None = None, checkpoint: str = "final", postprocessing: bool = True):
        from ..pipeline import load_plans, plans_hash

        self.workdir = Workdir(workdir)
        self.plans = load_plans(self.workdir.root)
        self.plans_hash = plans_hash(self.plans)
        if checkpoint not in CHECKPOINT_KINDS:
            raise AutosegError(f"checkpoint '{checkpoint}' is unknown; expected one of {', '.join(CHECKPOINT_KINDS)}")
        self.checkpoint = checkpoint
        self.fast = bool(fast)
        self.step_size = float(step_size if step_size is not None else (FAST_STEP_SIZE if fast else DEFAULT_STEP_SIZE))
        if not 0.0 < self.step_size <= 1.0:
            raise AutosegError(f"step size {self.step_size} is out of range; expected 0 < step <= 1 "
                               f"(a fraction of the patch; 0.5 is nnU-Net's default)")
        self.mirror = (not fast) if mirror is None else bool(mirror)
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))

        if isinstance(configurations, str):
            configurations = [configurations]
        if isinstance(folds, (int, str)):
            folds = [folds]
        selection = self._read_selection(optional=configurations is not None)
        folds_given = folds is not None
        if configurations is None:
            assert selection is not None  # _read_selection raised otherwise
            configurations = selection.winner_configurations
            if folds is None:
                folds = selection.folds
        self.configurations: list[str] = list(dict.fromkeys(str(c) for c in configurations))
        if not self.configurations:
            raise AutosegError("no configuration to predict with; pass at least one, e.g. -c 3d_fullres")
        self.postprocessing: list[PostprocessingStep] = []
        winner_used = selection is not None and set(selection.winner_configurations) == set(self.configurations)
        if postprocessing and winner_used:
            self.postprocessing = list(selection.postprocessing)
        self.selection_winner = selection.winner if selection is not None else None
        plans = [self.plans.configuration(c) for c in self.configurations]  # unknown name -> "did you mean"
        for cfg in plans:
            if cfg.previous_stage:
                raise AutosegError(f"configuration '{cfg.name}' takes the predictions of '{cfg.previous_stage}' "
                                   f"as input (cascade), which prediction does not support yet; predict "
                                   f"with -c {cfg.previous_stage} or another configuration")
        channels = {len(cfg.normalization) for cfg in plans}
        if len(channels) != 1:
            raise AutosegError(f"configurations {self.configurations} expect different numbers of input "
                               f"channels {sorted(channels)}; predict them separately")
        self.num_channels = channels.pop()
        self.channel_names = [n.name for n in plans[0].normalization]
        self.num_classes = plans[0].network.num_classes

        fold_list = [str(f) for f in (folds if folds is not None else self._default_folds())]
        if self.fast and not folds_given:
            fold_list = fold_list[:1]
        if not fold_list:
            raise AutosegError("no fold to predict with; pass e.g. --folds 0 1 2 3 4")
        self.folds: list[int | str] = [int(f) if f.isdigit() else f for f in dict.fromkeys(fold_list)]
        self._check_checkpoints()
        self.networks: dict[str, list[torch.nn.Module]] = {}
        self.precisions: dict[str, str] = {}
        for cfg in plans:
            self._load(cfg, precision)
        log.info("predictor: %s, folds %s, %s checkpoints on %s (%s), step %.2f, mirroring %s%s",
                 "+".join(self.configurations), self.folds, self.checkpoint, self.device,
                 ", ".join(f"{c} {p}" for c, p in self.precisions.items()), self.step_size,
                 "on" if self.mirror else "off",
                 f", postprocessing {[s.kind for s in self.postprocessing]}" if self.postprocessing else "")

    # ------------------------------------------------------------------ set-up
    def _read_selection(self, optional: bool = False) -> Selection | None:
        path = self.workdir.selection_json
        if not path.exists():
            if optional:
                return None
            raise AutosegError(f"{path} does not exist, so the best configuration is not known yet; run "
                               f"`autoseg find-best --workdir {self.workdir.root}` first, or name the "
                               f"configurations to use (-c 3d_fullres)")
        try:
            selection = load_json(Selection, path)
        except AutosegError as e:
            if not optional:
                raise
            log.warning("%s cannot be read (%s); its postprocessing is not used", path, e)
            return None
        if selection.plans_hash and selection.plans_hash != self.plans_hash:
            if optional:
                log.warning("%s was made for other plans; its postprocessing is not used", path)
                return None
            raise StaleArtifactError(f"{path} was made for other plans (plans hash {selection.plans_hash}, "
                                     f"plans.json now has {self.plans_hash}); rerun `autoseg find-best "
                                     f"--workdir {self.workdir.root} --overwrite`")
        return selection

    def _default_folds(self) -> list[str]:
        from ..schemas import Splits

        if self.workdir.splits_json.exists():
            return [str(k) for k in range(len(load_json(Splits, self.workdir.splits_json).folds))]
        return [str(k) for k in range(5)]

    def _check_checkpoints(self) -> None:
        missing = [(c, f) for c in self.configurations for f in self.folds
                   if not self.workdir.checkpoint(c, f, self.checkpoint).is_file()]
        if not missing:
            return
        cmds = "\n".join(f"  autoseg train --workdir {self.workdir.root} -c {c} --fold {f}" for c, f in missing)
        raise AutosegError(f"{len(missing)} of the {len(self.configurations) * len(self.folds)} trained "
                           f"networks needed are missing (checkpoint_{self.checkpoint}.pt of "
                           f"{', '.join(f'{c} fold {f}' for c, f in missing)}); run:\n{cmds}\n"
                           f"or predict with the folds that exist (--folds ...)")

    def _load(self, cfg: ConfigurationPlan, precision: str) -> None:
        from ..training.checkpoint import load_checkpoint
        from ..training.network import build_network

        nets, recorded = [], []
        for fold in self.folds:
            path = self.workdir.checkpoint(cfg.name, fold, self.checkpoint)
            ckpt = load_checkpoint(path, map_location="cpu")
            net = build_network(cfg.network)
            try:
                net.load_state_dict(ckpt["model"])
            except (RuntimeError, KeyError) as e:
                raise AutosegError(f"checkpoint {path} does not fit the '{cfg.name}' network in plans.json "
                                   f"({str(e).splitlines()[0]}); the plans changed after training: retrain "
                                   f"with `autoseg train --workdir {self.workdir.root} -c {cfg.name} "
                                   f"--fold {fold}`") from None
            recorded.append((ckpt.get("state") or {}).get("precision"))
            del ckpt
            if hasattr(net, "set_deep_supervision"):
                net.set_deep_supervision(False)
            nets.append(net.eval().to(self.device))
        self.networks[cfg.name] = nets
        self.precisions[cfg.name] = _resolve_precision(precision, self.device, recorded)

    # ------------------------------------------------------------------ prediction
    @property
    def num_members(self) -> int:
        """Ensemble members: one per (configuration, fold) network."""
        return sum(len(n) for n in self.networks.values())

    def _geometry(self, image: np.ndarray, geometry: Geometry | Sequence[float]) -> Geometry:
        if isinstance(geometry, Geometry):
            if tuple(geometry.shape_zyx) != tuple(image.shape[1:]):
                raise AutosegError(f"image of shape (C, Z, Y, X) {tuple(image.shape)} does not match its "
                                   f"geometry (size {geometry.size}, i.e. (Z, Y, X) {geometry.shape_zyx}); "
                                   f"pass the geometry of this image")
            return geometry
        spacing = [float(s) for s in geometry]
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise AutosegError(f"spacing {tuple(geometry)} is not a (Z, Y, X) spacing in mm; expected three "
                               f"positive numbers (2D images: (999, y, x))")
        return Geometry(ndim=3, size=tuple(int(s) for s in reversed(image.shape[1:])),
                        spacing=tuple(reversed(spacing)), origin=(0.0, 0.0, 0.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))

    def predict_array(self, image: np.ndarray, geometry: Geometry | Sequence[float], *,
                      return_probabilities: bool = False, return_uncertainty: bool = False,
                      case_id: str = "array") -> PredictionResult:
        """Segment one image held in memory.

        Args:
            image: ``(C, Z, Y, X)`` intensities as read from the files (not normalized); 2D images
                are ``(C, 1, Y, X)``.
            geometry: the image's Geometry, or its spacing ``(z, y, x)`` in mm (2D: ``(999, y, x)``).
            return_probabilities: also return the ensemble's probabilities ``(K, Z, Y, X)``.
            return_uncertainty: also return the members' disagreement ``(Z, Y, X)`` (module doc);
                this costs one extra resampling per member, not extra network passes.

        Peak memory (float32, K classes, C channels), per original voxel: the ensemble sum (4K
        bytes) plus one configuration's export (at most 8K: its cropped and its full-size map),
        plus the segmentation and uncertainty (5); per preprocessed voxel: the image (4C) and the
        sliding-window accumulators (4K + 4), with uncertainty also a sum of fold logits (4K).
        Members' probabilities (uncertainty) go to a float16 file on disk (2K bytes per voxel
        per member), never to RAM.
        """
        image = np.asarray(image)
        if image.ndim != 4:
            raise AutosegError(f"case {case_id}: image has shape {image.shape}; expected (C, Z, Y, X) "
                               f"(a 2D image is (C, 1, Y, X))")
        if image.shape[0] != self.num_channels:
            raise AutosegError(f"case {case_id}: image has {image.shape[0]} channel(s), the networks expect "
                               f"{self.num_channels} ({', '.join(self.channel_names)}); pass every channel")
        image = image.astype(np.float32, copy=False)
        geom = self._geometry(image, geometry)
        members = _MemberStore(self.num_members, (self.num_classes, *image.shape[1:])) \
            if return_uncertainty and self.num_members > 1 else None
        total: np.ndarray | None = None
        try:
            for name in self.configurations:
                probs = self._predict_configuration(name, image, geom, case_id, members)
                total = probs if total is None else np.add(total, probs, out=total)
                del probs
            assert total is not None
            if len(self.configurations) > 1:
                total /= len(self.configurations)
            seg = probabilities_to_segmentation(total)
            if self.postprocessing:
                from .postprocess import apply_postprocessing

                seg = apply_postprocessing(seg, self.postprocessing)
            uncertainty = None if not return_uncertainty else (
                members.uncertainty(total) if members is not None else np.zeros(image.shape[1:], np.float32))
        finally:
            if members is not None:
                members.close()
        return PredictionResult(seg, total if return_probabilities else None, uncertainty)

    def _predict_configuration(self, name: str, image: np.ndarray, geom: Geometry, case_id: str,
                               members: _MemberStore | None) -> np.ndarray:
        """Probabilities (K, Z, Y, X) of one configuration (folds' logits averaged)."""
        from ..preprocessing.preprocess import preprocess_arrays

        cfg = self.plans.configuration(name)
        data, _, info = preprocess_arrays(image, None, geom.spacing_zyx, cfg)
        props = CaseProperties(
            schema_version=SCHEMA_VERSION, case_id=case_id, geometry=geom, file_ending="",
            shape_before_crop_zyx=info["shape_before_crop"], crop_bbox_zyx=info["crop_bbox"],
            shape_after_crop_zyx=info["shape_after_crop"], spacing_before_zyx_mm=info["spacing_before"],
            spacing_after_zyx_mm=info["spacing_after"], shape_after_resampling_zyx=info["shape_after_resampling"],
            class_locations={}, plans_hash="", source_hash="")
        nets, precision = self.networks[name], self.precisions[name]
        if members is None:
            return predict_preprocessed_case(nets, data, props, cfg, device=str(self.device), precision=precision,
                                             step_size=self.step_size, mirror=self.mirror)
        # uncertainty: each fold's logits on their own (same network passes), exported as a member,
        # and summed so that the configuration's probabilities equal those of the path above
        logit_sum: torch.Tensor | None = None
        for net in nets:
            logits = predict_sliding_window(net, data, cfg.patch_size, cfg.network.num_classes,
                                            step_size=self.step_size,
                                            mirror_axes=tuple(cfg.mirror_axes) if self.mirror else None,
                                            device=self.device, precision=precision)
            members.add(logits_to_original_probabilities(logits, props, cfg))
            logit_sum = logits if logit_sum is None else logit_sum.add_(logits)
            del logits
        assert logit_sum is not None
        return logits_to_original_probabilities(logit_sum / len(nets), props, cfg)

    def predict_file(self, paths: Sequence[str | Path] | CaseFiles | str | Path, out_path: str | Path, *,
                     save_probabilities: bool = False, save_uncertainty: bool = False) -> dict[str, Any]:
        """Read one case's channel files, segment it, write ``out_path`` with the input's geometry.

        ``paths``: the channel files in channel order (or a CaseFiles). The segmentation gets the
        first channel file's size, spacing, origin and direction, in the format of ``out_path``'s
        ending. Optional: probabilities as ``<case>.npz`` (float16, key ``probabilities``,
        (K, Z, Y, X)) and uncertainty as ``<case>_uncertainty<ending>`` (float32; ``.nii.gz`` for
        PNG/BMP outputs, which cannot store floats). The segmentation is written last, each file
        atomically. Returns ``{"case_id", "seconds", "shape_zyx", "output", "probabilities",
        "uncertainty"}`` (paths as strings or None).
        """
        from ..data.image_io import read_image, write_image, write_segmentation

        t0 = time.monotonic()
        out_path = Path(out_path)
        if isinstance(paths, CaseFiles):
            case_id, files = paths.case_id, [str(p) for p in paths.images]
        else:
            files = [str(paths)] if isinstance(paths, (str, Path)) else [str(p) for p in paths]
            case_id = probabilities_path(out_path).name[:-4]
        if not files:
            raise AutosegError(f"case {case_id}: no image file given; pass its channel files")
        arrays, geometry = [], None
        for path in files:
            arr, geom = read_image(path)
            if arrays and arr.shape[1:] != arrays[0].shape[1:]:
                raise AutosegError(f"case {case_id}: {path} has shape (Z, Y, X) {arr.shape[1:]} but {files[0]} "
                                   f"has {arrays[0].shape[1:]}; every channel must be on the same grid")
            arrays.append(arr)
            geometry = geometry or geom
        image = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        del arrays
        if image.shape[0] != self.num_channels:
            raise AutosegError(f"case {case_id}: found {image.shape[0]} channel(s) in {', '.join(files)}; the "
                               f"networks expect {self.num_channels} ({', '.join(self.channel_names)}); give one "
                               f"file per channel, named <case>_0000, <case>_0001, ...")
        assert geometry is not None
        result = self.predict_array(image, geometry, return_probabilities=save_probabilities,
                                    return_uncertainty=save_uncertainty, case_id=case_id)
        info: dict[str, Any] = {"case_id": case_id, "shape_zyx": [int(s) for s in image.shape[1:]],
                                "output": str(out_path), "probabilities": None, "uncertainty": None}
        del image
        if result.probabilities is not None:
            npz = probabilities_path(out_path)
            _save_probabilities_npz(result.probabilities, npz, case_id=case_id)
            info["probabilities"] = str(npz)
        if result.uncertainty is not None:
            unc = uncertainty_path(out_path)
            write_image(result.uncertainty[None], geometry, unc)
            info["uncertainty"] = str(unc)
        write_segmentation(result.segmentation, geometry, out_path)
        info["seconds"] = round(time.monotonic() - t0, 3)
        return info


class _MemberStore:
    """Every ensemble member's probabilities (M, K, Z, Y, X) in a float16 file on disk (RAM stays
    bounded), reduced slab by slab to the mean total-variation distance to the ensemble."""

    def __init__(self, num_members: int, shape: tuple[int, ...]):
        self._dir = tempfile.TemporaryDirectory(prefix="autoseg_members_")
        self._store = np.lib.format.open_memmap(Path(self._dir.name) / "members.npy", mode="w+",
                                                dtype=np.float16, shape=(num_members, *shape))
        self._count = 0

    def add(self, probs: np.ndarray) -> None:
        self._store[self._count] = probs
        self._count += 1

    def uncertainty(self, mean: np.ndarray) -> np.ndarray:
        """Mean over members of 0.5 * sum_k |p_m[k] - mean[k]|, float32 (Z, Y, X) in [0, 1]."""
        if self._count != self._store.shape[0]:
            raise RuntimeError(f"{self._count} of {self._store.shape[0]} ensemble members were stored")
        out = np.zeros(mean.shape[1:], dtype=np.float32)
        per_slice = max(1, int(np.prod(mean.shape[2:], dtype=np.int64)) * mean.shape[0])
        step = max(1, _SLAB_VOXELS // per_slice)
        for z in range(0, mean.shape[1], step):
            ref = mean[:, z:z + step]
            for m in range(self._count):
                out[z:z + step] += np.abs(self._store[m, :, z:z + step].astype(np.float32) - ref).sum(axis=0)
        out *= 0.5 / self._count
        return np.clip(out, 0.0, 1.0, out=out)

    def close(self) -> None:
        del self._store
        self._dir.cleanup()
