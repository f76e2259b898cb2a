"""Predict new images with trained networks: the Python API behind ``autoseg predict``.

:class:`Predictor` loads the networks of one or more configurations (one per fold) once, then
predicts arrays held in memory (:meth:`Predictor.predict_array`) or image files
(:meth:`Predictor.predict_file`). Per configuration the folds' logits are averaged (in the
preprocessed space, like nnU-Net); across configurations the probabilities at the original
geometry are averaged; then argmax and, when the selection's winner is used, its postprocessing.
A cascade configuration (``previous_stage`` set, i.e. 3d_cascade_fullres) also loads the previous
stage's networks with the same folds and predicts it first (:mod:`.cascade_predict`).

A case goes through three steps that :func:`~autoseg.inference.predict_cases.predict_cases` can
overlap between cases: :meth:`Predictor.read_case` (read + preprocess, no network),
:meth:`Predictor.predict_prepared` (the networks) and :meth:`Predictor.write_result`.

Axis order: images ``(C, Z, Y, X)``, probabilities ``(K, Z, Y, X)``, segmentations and
uncertainty ``(Z, Y, X)``, in the original array order (see :mod:`autoseg.schemas`).

Uncertainty: the ensemble members are the (configuration, fold) networks of the configurations
ensembled (a previous stage that is only the cascade's input is no member); see
:mod:`.uncertainty`. With a single member it is 0 everywhere.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..data.dicom_io import DicomSeries
from ..errors import AutosegError
from ..schemas import CaseFiles, CaseProperties, ConfigurationPlan, Geometry, PostprocessingStep
from ..store import plans_hash
from .cascade_predict import cascade_input, stage_order
from ..preprocessing.preprocess import image_geometry
from .case_io import case_id_and_files, read_case_image, write_case_outputs
from .checks import check_dimensionality, check_image_array, check_spacing, resolve_precision
from ..model.export import logits_to_original_probabilities, probabilities_to_segmentation
from ..model.onnx_backend import BACKENDS, onnx_backend_available
from ..model.sliding_window import TileNetwork, predict_sliding_window
from .model_source import ModelSource, open_model_source
from .uncertainty import MemberStore
from ..model.case_prediction import predict_preprocessed_case

log = logging.getLogger(__name__)

DEFAULT_STEP_SIZE, FAST_STEP_SIZE = 0.5, 0.75  # --fast: 0.75 and no mirroring (nnU-Net maintainers' advice)


@dataclass
class PredictionResult:
    """One predicted case at the input's geometry.

    ``segmentation`` (Z, Y, X) uint8 (uint16 above 256 classes); ``probabilities`` (K, Z, Y, X)
    float32 summing to 1 over K, or None; ``uncertainty`` (Z, Y, X) float32 in [0, 1], or None.
    """

    segmentation: np.ndarray
    probabilities: np.ndarray | None = None
    uncertainty: np.ndarray | None = None


@dataclass
class PreparedCase:
    """One case ready for the networks (made by :meth:`Predictor.prepare_array` / :meth:`Predictor.read_case`,
    used once by :meth:`Predictor.predict_prepared`, which frees its arrays as it goes).

    ``image`` (C, Z, Y, X) float32, or None once every configuration's input is preprocessed;
    ``preprocessed``: data_identifier -> (float32 (C, *S) data, CaseProperties) done ahead of time;
    ``dicom``: the first channel's DICOM series when the case was read from DICOM series folders.
    """

    case_id: str
    geometry: Geometry
    shape_zyx: tuple[int, ...]
    image: np.ndarray | None
    preprocessed: dict[str, tuple[np.ndarray, CaseProperties]] = field(default_factory=dict)
    seconds: float = 0.0  # reading and preprocessing so far
    dicom: DicomSeries | None = None


class Predictor:
    """Networks of a trained work folder, loaded once, ready to predict images.

    Args:
        workdir: the work folder (``autoseg plan`` / ``autoseg train`` wrote it), an exported model
            zip (``autoseg export``), or a :class:`~autoseg.inference.model_source.ModelSource`.
        configurations: configurations to ensemble; None reads ``results/selection.json``
            (``autoseg find-best``) and uses its winner, folds and postprocessing. A cascade
            configuration brings its previous stage along (same folds), predicted once per case.
        folds: folds to use per configuration (ints, or "all"); None: the selection's folds, or
            every fold of splits.json; with ``fast`` only the first of them.
        device: "cpu", "cuda", "cuda:N"; None picks CUDA when present.
        precision: "auto" (fp16 on CUDA; on the CPU the precision recorded in the checkpoints,
            fp32 if none), "fp32", "bf16" or "fp16" (CUDA only).
        fast: no mirroring, step 0.75, one fold per configuration (unless ``folds`` is given).
        step_size: sliding-window step as a fraction of the patch (None: 0.5, or 0.75 with fast).
        mirror: mirror test-time augmentation (None: on unless fast).
        checkpoint: "final", "best" or "latest" (None: final; for a model zip, the weights it holds).
        postprocessing: apply the selection's postprocessing when the selection's winner is used.
        backend: "torch", "onnxruntime" (CPU, fp32: the zip's ONNX networks, or the torch networks
            exported to ONNX in memory), or "auto": onnxruntime for a configuration that runs on the CPU
            in fp32 when onnx and onnxruntime are installed (faster: docs/benchmarks/onnx_speed.md),
            else torch. The sliding window, pre- and postprocessing are the same either way.

    Missing checkpoints stop the constructor with AutosegError naming the ``autoseg train``
    commands; folds whose ``train_settings.json`` records another plan than plans.json now holds
    (re-planned since) with :class:`~autoseg.errors.StaleArtifactError`.
    """

    def __init__(self, workdir: str | Path | ModelSource, *, configurations: Sequence[str] | None = None,
                 folds: Sequence[int | str] | None = None, device: str | torch.device | None = None,
                 precision: str = "auto", fast: bool = False, step_size: float | None = None,
                 mirror: bool | None = None, checkpoint: str | None = None, postprocessing: bool = True,
                 backend: str = "auto"):
        self.source = open_model_source(workdir)
        self.plans = self.source.plans
        self.plans_hash = plans_hash(self.plans)
        self.checkpoint = self.source.resolve_checkpoint(checkpoint)
        if backend not in BACKENDS:
            raise AutosegError(f"backend '{backend}' is unknown; expected one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.fast = bool(fast)
        self.step_size = float(step_size if step_size is not None else (FAST_STEP_SIZE if fast else DEFAULT_STEP_SIZE))
        if not 0.0 < self.step_size <= 1.0:
            raise AutosegError(f"step size {self.step_size} is out of range; expected 0 < step <= 1 "
                               f"(a fraction of the patch; 0.5 is nnU-Net's default)")
        self.mirror = (not fast) if mirror is None else bool(mirror)
        if backend == "onnxruntime":
            if device is not None and torch.device(device).type != "cpu":
                raise AutosegError(f"--backend onnxruntime runs on the CPU only, not on '{device}'; leave --device "
                                   f"out, or use --backend torch on {device}")
            if precision not in ("auto", "fp32"):
                raise AutosegError(f"--backend onnxruntime runs in fp32 only, not {precision}; use --backend torch "
                                   f"for {precision}")
            device, precision = "cpu", "fp32"
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))

        if isinstance(configurations, str):
            configurations = [configurations]
        if isinstance(folds, (int, str)):
            folds = [folds]
        selection = self.source.selection(optional=configurations is not None)
        folds_given = folds is not None
        if configurations is None:
            assert selection is not None  # selection_for raised otherwise
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
        # every configuration to run, previous stages (cascade inputs) first, each once
        self.stages: list[str] = stage_order(self.plans, self.configurations)
        stage_plans = [self.plans.configuration(c) for c in self.stages]
        self.previous_stages: dict[str, str] = {c.name: str(c.previous_stage) for c in stage_plans if c.previous_stage}
        channels = {len(cfg.normalization) for cfg in stage_plans}
        if len(channels) != 1:
            raise AutosegError(f"configurations {self.stages} expect different numbers of input "
                               f"channels {sorted(channels)}; predict them separately")
        self.num_channels = channels.pop()
        self.channel_names = [n.name for n in plans[0].normalization]
        self.num_classes = plans[0].network.num_classes  # output channels: classes, or regions
        self.label_spec = plans[0].labels
        self.image_ndim = self.source.image_ndim()  # 2 or 3: the images the networks were trained on

        fold_list = [str(f) for f in (folds if folds is not None else self.source.default_folds())]
        if self.fast and not folds_given:
            fold_list = fold_list[:1]
        if not fold_list:
            raise AutosegError("no fold to predict with; pass e.g. --folds 0 1 2 3 4")
        self.folds: list[int | str] = [int(f) if f.isdigit() else f for f in dict.fromkeys(fold_list)]
        self.source.check_networks(self.stages, self.folds, self.checkpoint, self._describe)
        self.networks: dict[str, list[TileNetwork]] = {}
        self.precisions: dict[str, str] = {}
        self.backends: dict[str, str] = {}  # configuration -> "torch" or "onnxruntime"
        for cfg in stage_plans:
            self._load(cfg, precision)
        log.info("predictor: %s, folds %s, %s checkpoints on %s (%s, %s), step %.2f, mirroring %s%s%s",
                 "+".join(self.configurations), self.folds, self.checkpoint, self.device,
                 ", ".join(f"{c} {b}" for c, b in self.backends.items()),
                 ", ".join(f"{c} {p}" for c, p in self.precisions.items()), self.step_size,
                 "on" if self.mirror else "off",
                 "".join(f", {c} predicted first as the input of {n}" for n, c in self.previous_stages.items()),
                 f", postprocessing {[s.kind for s in self.postprocessing]}" if self.postprocessing else "")

    # ------------------------------------------------------------------ set-up
    def _describe(self, configuration: str, fold: int | str) -> str:
        users = [n for n, p in self.previous_stages.items() if p == configuration]
        extra = f" (the input of {', '.join(users)})" if users and configuration not in self.configurations else ""
        return f"{configuration} fold {fold}{extra}"

    def _load(self, cfg: ConfigurationPlan, precision: str) -> None:
        """Load the folds of ``cfg`` (weights verified by the source), resolve the precision, then run them in
        torch or, with backend onnxruntime (or auto on the CPU in fp32, when installed), in ONNX Runtime."""
        from ..model.network import build_network

        nets, recorded = [], []
        for fold in self.folds:
            net = build_network(cfg.network)
            recorded.append(self.source.load_weights(cfg, fold, self.checkpoint, net))
            if hasattr(net, "set_deep_supervision"):
                net.set_deep_supervision(False)
            nets.append(net.eval())
        self.precisions[cfg.name] = resolve_precision(precision, self.device, recorded)
        use_onnx = self.backend == "onnxruntime" or (
            self.backend == "auto" and self.device.type == "cpu" and self.precisions[cfg.name] == "fp32"
            and onnx_backend_available())
        self.backends[cfg.name] = "onnxruntime" if use_onnx else "torch"
        if not use_onnx:
            self.networks[cfg.name] = [net.to(self.device) for net in nets]
            return
        from ..hardware import usable_cpu_cores
        from ..model.onnx_backend import OnnxTileNetwork, export_onnx

        sessions: list[TileNetwork] = []
        for fold, net in zip(self.folds, nets):
            # the zip's ONNX network; from a work folder (or a zip without --onnx) the same network exported now
            onnx = self.source.onnx(cfg.name, fold) or export_onnx(net, cfg)
            sessions.append(OnnxTileNetwork(onnx, threads=usable_cpu_cores(), name=f"{cfg.name} fold {fold}"))
        self.networks[cfg.name] = sessions

    @property
    def backend_used(self) -> str | dict[str, str]:
        """What ran the networks: "torch" or "onnxruntime", or per configuration when they differ."""
        used = set(self.backends.values())
        return used.pop() if len(used) == 1 else dict(self.backends)

    # ------------------------------------------------------------------ reading and preprocessing
    @property
    def num_members(self) -> int:
        """Ensemble members: one per (configuration, fold) network of the configurations ensembled."""
        return sum(len(self.networks[c]) for c in self.configurations)

    def prepare_array(self, image: np.ndarray, geometry: Geometry | Sequence[float], *, case_id: str = "array",
                      preprocess: bool = False) -> PreparedCase:
        """Check one image (see :meth:`predict_array`) and, with ``preprocess``, preprocess it for
        every configuration now (then the image itself is let go); else that happens while predicting.

        Refused with AutosegError naming the case: another shape than (C, Z, Y, X), another channel
        count than the networks', NaN or infinite values, a 2D image for networks trained on 3D images
        or the reverse."""
        return self._prepare(image, geometry, case_id, preprocess, files=None)

    def _prepare(self, image: np.ndarray, geometry: Geometry | Sequence[float], case_id: str, preprocess: bool,
                 files: Sequence[str] | None) -> PreparedCase:
        """:meth:`prepare_array`; ``files``: the files the image was read from (already checked for
        NaN/Inf, file by file), named in the messages."""
        t0 = time.monotonic()
        image = check_image_array(case_id, np.asarray(image), self.num_channels, self.channel_names,
                                  finite_checked=files is not None)
        prepared = PreparedCase(case_id, image_geometry(image, geometry), tuple(image.shape[1:]), image)
        source = str(files[0]) if files else "the image"
        check_dimensionality(case_id, prepared.geometry, source, self.image_ndim, self.stages,
                             self.plans.dataset_name)
        warning = check_spacing(case_id, source, prepared.geometry,
                                self.plans.configuration(self.stages[0]).spacing_zyx_mm, self.image_ndim)
        if warning:
            log.warning("%s", warning)
        if preprocess:
            for name in self.stages:
                ident = self.plans.configuration(name).data_identifier
                if ident not in prepared.preprocessed:
                    prepared.preprocessed[ident] = self._preprocess(prepared, name)
            prepared.image = None
        prepared.seconds = time.monotonic() - t0
        return prepared

    def read_case(self, paths: Sequence[str | Path] | CaseFiles | str | Path, out_path: str | Path, *,
                  preprocess: bool = False) -> PreparedCase:
        """Read one case's channel files (see :meth:`predict_file`) into a :class:`PreparedCase`."""
        t0 = time.monotonic()
        case_id, files = case_id_and_files(paths, out_path)
        image, geometry, dicom = read_case_image(case_id, files, self.num_channels, self.channel_names)
        prepared = self._prepare(image, geometry, case_id, preprocess, files=files)
        prepared.dicom = dicom
        prepared.seconds = time.monotonic() - t0
        return prepared

    def _preprocess(self, prepared: PreparedCase, name: str) -> tuple[np.ndarray, CaseProperties]:
        from ..preprocessing.preprocess import preprocess_arrays

        if prepared.image is None:
            raise RuntimeError(f"case {prepared.case_id}: its image was let go before {name} was preprocessed")
        case = preprocess_arrays(prepared.image, None, prepared.geometry, self.plans.configuration(name),
                                 case_id=prepared.case_id)
        return case.data, case.properties

    def _input(self, prepared: PreparedCase, index: int) -> tuple[np.ndarray, CaseProperties]:
        """The preprocessed input of stage ``index``: done ahead, or now; freed after its last use, and
        the image once no later stage needs to be preprocessed from it."""
        ident = self.plans.configuration(self.stages[index]).data_identifier
        later = {self.plans.configuration(n).data_identifier for n in self.stages[index + 1:]}
        if ident not in prepared.preprocessed:
            prepared.preprocessed[ident] = self._preprocess(prepared, self.stages[index])
        if later <= set(prepared.preprocessed):
            prepared.image = None
        return prepared.preprocessed[ident] if ident in later else prepared.preprocessed.pop(ident)

    # ------------------------------------------------------------------ prediction
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

        Peak memory: docs/prediction.md §8 (the arrays held at once, per original and per
        preprocessed voxel). Members' probabilities (uncertainty) go to a float16 file on disk.
        """
        prepared = self.prepare_array(image, geometry, case_id=case_id)
        return self.predict_prepared(prepared, return_probabilities=return_probabilities,
                                     return_uncertainty=return_uncertainty)

    def predict_prepared(self, prepared: PreparedCase, *, return_probabilities: bool = False,
                         return_uncertainty: bool = False) -> PredictionResult:
        """Run the networks on a :class:`PreparedCase` (used up: its arrays are freed as it goes)."""
        shape = tuple(prepared.shape_zyx)
        weight = 1.0 / self.num_classes if self.label_spec.region_based else 0.5  # TV, or the mean over regions
        members = MemberStore(self.num_members, (self.num_classes, *shape), weight) \
            if return_uncertainty and self.num_members > 1 else None
        total: np.ndarray | None = None
        inputs_of_next: dict[str, np.ndarray] = {}  # previous stage -> its segmentation (original geometry)
        try:
            for index, name in enumerate(self.stages):
                probs = self._predict_configuration(index, prepared, inputs_of_next,
                                                    members if name in self.configurations else None)
                if name in self.previous_stages.values():
                    inputs_of_next[name] = probabilities_to_segmentation(probs, self.label_spec)  # no postprocessing
                if name in self.configurations:
                    total = probs if total is None else np.add(total, probs, out=total)
                del probs
            inputs_of_next.clear()
            assert total is not None
            if len(self.configurations) > 1:
                total /= len(self.configurations)
            seg = probabilities_to_segmentation(total, self.label_spec)
            if self.postprocessing:
                from .postprocess import apply_postprocessing

                seg = apply_postprocessing(seg, self.postprocessing)
            uncertainty = None if not return_uncertainty else (
                members.uncertainty(total) if members is not None else np.zeros(shape, np.float32))
        finally:
            if members is not None:
                members.close()
        return PredictionResult(seg, total if return_probabilities else None, uncertainty)

    def _predict_configuration(self, index: int, prepared: PreparedCase, inputs_of_next: dict[str, np.ndarray],
                               members: MemberStore | None) -> np.ndarray:
        """Probabilities (K, Z, Y, X) of stage ``index`` (folds' logits averaged)."""
        name = self.stages[index]
        cfg = self.plans.configuration(name)
        data, props = self._input(prepared, index)
        if cfg.previous_stage:
            data = cascade_input(data, props, inputs_of_next[cfg.previous_stage], cfg)
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

    # ------------------------------------------------------------------ files
    def write_result(self, case_id: str, geometry: Geometry, result: PredictionResult,
                     out_path: str | Path, *, dicom_seg: Any = None) -> dict[str, Any]:
        """Write a result's files (see :meth:`predict_file`; ``dicom_seg``: see :func:`write_case_outputs`);
        returns what :func:`write_case_outputs` does."""
        return write_case_outputs(case_id, out_path, geometry, result.segmentation, result.probabilities,
                                  result.uncertainty, dicom_seg=dicom_seg)

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
        t0 = time.monotonic()
        prepared = self.read_case(paths, out_path)
        case_id, geometry = prepared.case_id, prepared.geometry
        result = self.predict_prepared(prepared, return_probabilities=save_probabilities,
                                       return_uncertainty=save_uncertainty)
        del prepared
        info = self.write_result(case_id, geometry, result, out_path)
        info["seconds"] = round(time.monotonic() - t0, 3)
        return info
