"""The Planner contract: ``Planner.plan(fingerprint, budget, time_budget_s=None) -> Plans``, built from small steps.

A planner is a pure function of its inputs (no clock, hardware, environment or globals). The
steps, each overridable on its own, run in this order:

1. :meth:`Planner.target_spacing`  fullres target spacing (zyx, mm) and its Decision
2. :meth:`Planner.transpose`       ``transpose_forward`` (coarsest axis first)
3. :meth:`Planner.normalization`   one :class:`ChannelNormalization` per channel
4. :meth:`Planner.resampling`      the :class:`ResamplingSpec`
5. :meth:`Planner.configurations`  which configurations exist (2d, 3d_fullres, 3d_lowres, cascade);
   each one is sized by
6. :meth:`Planner.size_configuration` (abstract): topology, patch and batch for the hardware
7. :meth:`Planner.dataset_warnings`  warnings from the label statistics

Sizes in a :class:`SizingRequest` are in the configuration's patch-axis (transposed) order;
everything in the written plans follows the axis-order contract of :mod:`autoseg.schemas`.
"""
from __future__ import annotations

import abc
import logging
import math
from dataclasses import dataclass, field, replace

from ..version import __version__
from ..errors import AutosegError
from ..schemas import (SCHEMA_VERSION, ChannelNormalization, ConfigurationPlan, Configuration, Decision, Fingerprint,
                       HardwareBudget, NetworkSpec, Plans, ResamplingSpec, stable_hash)
from ..preprocessing.identity import data_identifier
from .memory import gflop_per_iteration
from .sampling import median_object_voxels, sampling_decision
from .spacing import (fullres_target_spacing, inverse_permutation, lowres_spacing_step, median_resampled_shape,
                      permute, transpose_order)

logger = logging.getLogger(__name__)

#: channel name (casefolded) -> normalization scheme, as nnU-Net v2 maps ``channel_names``.
CHANNEL_NAME_TO_SCHEME = {"ct": "ct", "nonorm": "no_norm", "zscore": "zscore",
                          "rescale_to_0_1": "rescale_0_1", "rgb_to_0_1": "rgb_0_1"}
#: Masked z-score when the crop keeps less than this fraction of the image (median over cases).
USE_MASK_RELATIVE_SIZE_THRESHOLD = 0.75


# --------------------------------------------------------------------------- sizing contract

@dataclass(frozen=True)
class SizingRequest:
    """One configuration to size. ``spacing`` and ``median_shape`` have ``dims`` entries in patch-axis
    (transposed) order; ``median_shape`` is the median image shape at that spacing (may be fractional).
    ``dataset_voxels`` approximates the whole training set's voxels at the configuration's spacing
    (median 3D image x cases, also for 2d, as nnU-Net does)."""

    configuration: str
    dims: int
    spacing: list[float]
    median_shape: list[float]
    in_channels: int
    num_classes: int  # including background
    num_cases: int
    dataset_voxels: float
    time_budget_s: float | None = None  # wall-clock seconds per training given by the user (None: not given)


@dataclass(frozen=True)
class Sizing:
    """What a sizing step decided: patch (patch-axis order), batch, network and the estimates."""

    patch_size: list[int]
    batch_size: int
    network: NetworkSpec
    estimated_memory_gb: float
    estimated_gflop_per_iteration: float
    decisions: list[Decision] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


DEFAULT_CPU_TIME_BUDGET_S = 20 * 60.0  # what a CPU plan without --time-budget assumes (and training then uses)


def check_time_budget(seconds: float | None) -> float | None:
    """``seconds`` as a float, or AutosegError when it is not a positive finite duration."""
    if seconds is None:
        return None
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise AutosegError(f"the time budget must be a positive duration, found {seconds!r} s; "
                           f"give e.g. --time-budget 2h")
    return float(seconds)


def normalization_scheme_for(channel_name: str) -> str:
    """nnU-Net v2's mapping of a ``channel_names`` entry to a scheme; anything unknown is ``zscore``."""
    return CHANNEL_NAME_TO_SCHEME.get(str(channel_name).casefold(), "zscore")


def check_fingerprint(fp: Fingerprint) -> None:
    """Raise an AutosegError when ``fp`` cannot be planned from (says what to rerun)."""
    rerun = "rerun `autoseg plan DATASET --workdir RUN --overwrite` to rebuild fingerprint.json"
    if fp.ndim not in (2, 3):
        raise AutosegError(f"fingerprint.json of {fp.dataset_name}: ndim is {fp.ndim}, expected 2 or 3; {rerun}")
    if not fp.cases:
        raise AutosegError(f"fingerprint.json of {fp.dataset_name} lists no training cases; add cases to "
                           f"imagesTr/ and labelsTr/, then {rerun}")
    if not fp.channel_names:
        raise AutosegError(f"fingerprint.json of {fp.dataset_name} has no channel_names; check dataset.json, "
                           f"then {rerun}")
    if len(fp.labels) < 2:
        raise AutosegError(f"fingerprint.json of {fp.dataset_name} has labels {fp.labels}; expected background "
                           f"and at least one foreground label in dataset.json, then {rerun}")


def label_decisions(fp: Fingerprint) -> list[Decision]:
    """What the network outputs and what counts, when the dataset has regions or an ignore label."""
    spec, out = fp.labels_spec, []
    if spec.region_based:
        names = ", ".join(f"{k} {v}" for k, v in spec.regions.items())
        out.append(Decision("outputs", spec.num_outputs, "region_based",
                            f"dataset.json maps names to lists of labels: {spec.num_outputs} overlapping regions "
                            f"({names}), one sigmoid output each, trained with Dice + binary cross-entropy; a "
                            f"label map is made back by painting {spec.regions_class_order} in that order "
                            f"(regions_class_order).", {"regions": dict(spec.regions),
                                                        "regions_class_order": list(spec.regions_class_order)}))
    if spec.ignore_label is not None:
        share = fp.ignored_voxel_fraction
        out.append(Decision("ignore_label", spec.ignore_label, "ignore_label",
                            f"voxels labelled {spec.ignore_label} ('ignore') are unannotated"
                            + (f" ({100 * share:.1f}% of all voxels)" if share is not None else "")
                            + ": they enter no loss term and no metric and are never sampled as foreground.",
                            {"ignored_voxel_fraction": share}))
    return out


# --------------------------------------------------------------------------- the planner

class Planner(abc.ABC):
    """Base of every planner. Subclasses set ``name`` and ``description`` and implement
    :meth:`size_configuration`; every other step has nnU-Net v2's behaviour and may be overridden."""

    name: str = ""
    description: str = ""
    foreground_oversample_fraction: float = 0.33
    #: 3d_lowres is planned when the fullres patch covers less than this fraction of the median image.
    lowres_creation_threshold: float = 0.25
    #: ... and dropped again when it is less than this many times smaller than fullres.
    lowres_min_size_ratio: float = 2.0
    max_lowres_steps: int = 1000
    #: dummy 2D augmentation when max(patch) / patch[0] exceeds this (3D only).
    dummy_2d_aspect_threshold: float = 3.0
    #: seconds per training a CPU plan assumes without --time-budget (recorded in plans.json; training uses it)
    default_cpu_time_budget_s: float = DEFAULT_CPU_TIME_BUDGET_S
    #: on CUDA, `autoseg plan` corrects this planner's patch and batch by dry runs on the GPU that is here
    #: (planning/measured.py, unless --no-dry-run); a planner that reproduces a fixed plan sets False
    fit_to_measured_gpu_memory: bool = True

    def plan(self, fingerprint: Fingerprint, budget: HardwareBudget, time_budget_s: float | None = None) -> Plans:
        """Plan every configuration for ``fingerprint`` on ``budget``; a pure function of its arguments.

        ``time_budget_s``: wall-clock seconds per training. On a CPU without it the planner assumes
        :attr:`default_cpu_time_budget_s`; either is recorded once, in ``Plans.time_budget_s``, and
        reaches the sizing steps as ``SizingRequest.time_budget_s``.
        """
        check_fingerprint(fingerprint)
        given = check_time_budget(time_budget_s)
        seconds = given if given is not None else (self.default_cpu_time_budget_s if budget.device == "cpu" else None)
        self._time_budget_s = given  # the sizing steps fall back to default_cpu_time_budget_s themselves
        spacing, d_spacing = self.target_spacing(fingerprint)
        forward, d_transpose = self.transpose(fingerprint, spacing)
        normalization, d_norm = self.normalization(fingerprint)
        resampling = self.resampling(fingerprint)
        configs, d_configs, warnings = self.configurations(fingerprint, budget, spacing, forward, normalization,
                                                           resampling)
        spec = fingerprint.labels_spec  # every configuration carries how its outputs become a label map
        configs = {k: replace(c, label_spec=spec) for k, c in configs.items()}
        d_configs = [*d_configs, *label_decisions(fingerprint),
                     *(sampling_decision(fingerprint, c) for c in configs.values())]
        warnings = list(warnings) + self.dataset_warnings(fingerprint, configs)
        logger.debug("planner '%s' planned %s for %s on %s", self.name, ", ".join(configs),
                     fingerprint.dataset_name, budget.device)
        return Plans(schema_version=SCHEMA_VERSION, planner=self.name, autoseg_version=__version__,
                     dataset_name=fingerprint.dataset_name, fingerprint_hash=stable_hash(fingerprint),
                     hardware=budget, configurations=configs,
                     decisions=[d_spacing, d_transpose, *d_norm, *d_configs], warnings=warnings,
                     time_budget_s=seconds, time_budget_given=given is not None)

    # ------------------------------------------------------------------ steps

    def target_spacing(self, fingerprint: Fingerprint) -> tuple[list[float], Decision]:
        """Fullres target spacing (z, y, x) in mm: median, or the 10th-percentile anisotropy rule."""
        return fullres_target_spacing([c.spacing_zyx_mm for c in fingerprint.cases],
                                      [c.shape_after_crop_zyx for c in fingerprint.cases], ndim=fingerprint.ndim)

    def transpose(self, fingerprint: Fingerprint, target_spacing: list[float]) -> tuple[list[int], Decision]:
        """``transpose_forward``: the axis with the largest target spacing first."""
        return transpose_order(target_spacing)

    def normalization(self, fingerprint: Fingerprint) -> tuple[list[ChannelNormalization], list[Decision]]:
        """One scheme per channel from its name; z-score uses the nonzero mask when cropping removed a lot."""
        stats = {s.channel: s for s in fingerprint.intensity}
        rel = float(fingerprint.median_relative_size_after_crop)
        out, decisions = [], []
        for key in sorted(fingerprint.channel_names, key=int):
            ch, name = int(key), fingerprint.channel_names[key]
            scheme = normalization_scheme_for(name)
            clip_low = clip_high = mean = std = None
            if scheme == "ct":
                if ch not in stats:
                    raise AutosegError(f"fingerprint.json of {fingerprint.dataset_name} has no foreground intensity "
                                       f"statistics for channel {ch} ('{name}'), which CT normalization needs; rerun "
                                       f"`autoseg plan DATASET --workdir RUN --overwrite`")
                s = stats[ch]
                clip_low, clip_high, mean, std = s.percentile_00_5, s.percentile_99_5, s.mean, s.std
                reason = (f"channel {ch} is named '{name}' -> CT: clip to the dataset foreground percentiles "
                          f"[{clip_low:.4g}, {clip_high:.4g}], then subtract the foreground mean {mean:.4g} and "
                          f"divide by its std {std:.4g} (same for every case).")
            elif scheme == "zscore":
                reason = (f"channel {ch} is named '{name}', not a special name (CT, noNorm, rescale_to_0_1, "
                          f"rgb_to_0_1) -> per-case z-score.")
            else:
                reason = f"channel {ch} is named '{name}' -> scheme '{scheme}'."
            if scheme == "rgb_0_1" and ch in stats and (stats[ch].min < 0 or stats[ch].max > 255):
                raise AutosegError(f"dataset.json of {fingerprint.dataset_name} names channel {ch} '{name}', which "
                                   f"divides by 255 and expects 8-bit values, but its foreground intensities range "
                                   f"over [{stats[ch].min:g}, {stats[ch].max:g}]; rename the channel in "
                                   f"dataset.json 'channel_names' ('rescale_to_0_1' rescales each case to [0, 1]; any "
                                   f"name without a special meaning, e.g. 'brightfield', gives per-case z-score) and "
                                   f"rerun `autoseg plan ... --overwrite`")
            use_mask = scheme == "zscore" and rel < USE_MASK_RELATIVE_SIZE_THRESHOLD
            if scheme != "zscore":
                mask_reason = f"channel {ch}: no mask, only z-score can normalize inside the nonzero mask."
            elif use_mask:
                mask_reason = (f"channel {ch}: cropping to the nonzero region keeps a median {rel:.0%} of the image "
                               f"(< {USE_MASK_RELATIVE_SIZE_THRESHOLD:.0%}) -> z-score inside the nonzero mask, "
                               f"outside set to 0.")
            else:
                mask_reason = (f"channel {ch}: cropping keeps a median {rel:.0%} of the image "
                               f"(>= {USE_MASK_RELATIVE_SIZE_THRESHOLD:.0%}) -> z-score over the whole crop.")
            inputs = {"channel_name": name, "median_relative_size_after_crop": rel}
            decisions.append(Decision(f"normalization[{ch}]", scheme, f"channel_name_{scheme}", reason, inputs))
            decisions.append(Decision(f"use_mask_for_norm[{ch}]", use_mask, "crop_fraction_below_0.75"
                                      if use_mask else "no_mask", mask_reason, inputs))
            out.append(ChannelNormalization(channel=ch, name=name, scheme=scheme, use_mask=use_mask,
                                            clip_low=clip_low, clip_high=clip_high, mean=mean, std=std))
        return out, decisions

    def resampling(self, fingerprint: Fingerprint) -> ResamplingSpec:
        """Resampling orders (nnU-Net: images 3, one-hot labels 1, separate z beyond 3x anisotropy)."""
        return ResamplingSpec()

    @abc.abstractmethod
    def size_configuration(self, request: SizingRequest, fingerprint: Fingerprint,
                           budget: HardwareBudget) -> Sizing:
        """Topology, patch and batch of one configuration for ``budget``, with Decisions for each."""

    def dataset_warnings(self, fingerprint: Fingerprint, configurations: dict[str, ConfigurationPlan]) -> list[str]:
        """Dataset-level warnings for ``Plans.warnings``. The base planner adds none; the default
        planner warns from the label statistics (absent labels, tiny objects, class imbalance)."""
        return []

    def configurations(self, fingerprint: Fingerprint, budget: HardwareBudget, spacing: list[float],
                       forward: list[int], normalization: list[ChannelNormalization], resampling: ResamplingSpec
                       ) -> tuple[dict[str, ConfigurationPlan], list[Decision], list[str]]:
        """2d always; for 3D data 3d_fullres, and 3d_lowres + 3d_cascade_fullres when the fullres patch
        covers less than :attr:`lowres_creation_threshold` of the median image."""
        spacings = [c.spacing_zyx_mm for c in fingerprint.cases]
        shapes = [c.shape_after_crop_zyx for c in fingerprint.cases]
        median = median_resampled_shape(spacings, shapes, spacing)
        med_t, sp_t = permute(median, forward), permute(spacing, forward)
        common = dict(in_channels=len(fingerprint.channel_names), num_classes=fingerprint.labels_spec.num_outputs,
                      num_cases=len(fingerprint.cases), dataset_voxels=math.prod(med_t) * len(fingerprint.cases),
                      time_budget_s=getattr(self, "_time_budget_s", None))
        build = dict(forward=forward, normalization=normalization, resampling=resampling)
        configs: dict[str, ConfigurationPlan] = {}
        decisions: list[Decision] = []
        warnings: list[str] = []

        req2d = SizingRequest(Configuration.TWO_D.value, 2, sp_t[1:], med_t[1:], **common)
        s2d = self.size_configuration(req2d, fingerprint, budget)
        configs[req2d.configuration] = self._config_plan(req2d, s2d, spacing, median, **build)
        warnings += s2d.warnings
        where = ("the images themselves" if fingerprint.ndim == 2 else
                 f"slices across transposed axis 0 ({med_t[0]:.0f} slices)")
        decisions.append(Decision("configuration[2d]", True, "always_2d",
                                  f"2d is always planned: {where}, median {med_t[1]:.0f} x {med_t[2]:.0f} voxels."))
        if fingerprint.ndim == 2:
            for name in (Configuration.FULLRES, Configuration.LOWRES, Configuration.CASCADE_FULLRES):
                decisions.append(Decision(f"configuration[{name.value}]", False, "2d_data_only_2d",
                                          "the images are 2D, so only the 2d configuration is planned."))
            return configs, decisions, warnings

        req = SizingRequest(Configuration.FULLRES.value, 3, sp_t, med_t, **common)
        full = self.size_configuration(req, fingerprint, budget)
        configs[req.configuration] = self._config_plan(req, full, spacing, median, **build)
        warnings += full.warnings
        decisions.append(Decision("configuration[3d_fullres]", True, "3d_data",
                                  f"3d_fullres is planned for 3D data at the target spacing "
                                  f"(median {' x '.join(f'{m:.0f}' for m in med_t)} voxels, transposed)."))
        low = self._lowres(req, full, forward, fingerprint, budget)
        if isinstance(low, Decision):
            decisions += [low, replace(low, subject="configuration[3d_cascade_fullres]")]
            return configs, decisions, warnings
        low_req, low_sizing, low_spacing, low_decision = low
        low_median = [float(m) for m in permute(low_req.median_shape, inverse_permutation(forward))]
        lowres = self._config_plan(low_req, low_sizing, low_spacing, low_median, **build)
        lowres = replace(lowres, next_stage=Configuration.CASCADE_FULLRES.value,
                         decisions=[low_decision, *lowres.decisions])
        configs[Configuration.LOWRES.value] = lowres
        configs[Configuration.CASCADE_FULLRES.value] = self._cascade(configs[Configuration.FULLRES.value], fingerprint)
        warnings += low_sizing.warnings
        warnings += self._lost_at_lowres(fingerprint, configs[Configuration.FULLRES.value], lowres)
        decisions.append(replace(low_decision, subject="configuration[3d_lowres]", value=True))
        decisions.append(Decision("configuration[3d_cascade_fullres]", True, "cascade_follows_lowres",
                                  "3d_cascade_fullres refines the 3d_lowres prediction at full resolution."))
        return configs, decisions, warnings

    # ------------------------------------------------------------------ helpers

    #: a label whose median object shrinks below this many voxels at the 3d_lowres spacing is warned about
    lowres_min_object_voxels: float = 8.0

    def _lost_at_lowres(self, fingerprint: Fingerprint, fullres: ConfigurationPlan,
                        lowres: ConfigurationPlan) -> list[str]:
        """A warning for labels the 3d_lowres spacing makes nearly invisible (a small patch, as on a CPU,
        makes the lowres search coarsen far). The plan is kept: find-best compares the cascade with
        3d_fullres on cross-validation, and the cascade still sees these labels at full resolution."""
        at_full, at_low = median_object_voxels(fingerprint, fullres), median_object_voxels(fingerprint, lowres)
        floor = self.lowres_min_object_voxels
        lost = {lab: vox for lab, vox in at_low.items() if vox < floor <= at_full.get(lab, 0.0)}
        if not lost:
            return []
        names = {ls.label: ls.name for ls in fingerprint.label_stats}
        listed = ", ".join(f"{lab} ({names.get(lab, lab)}: ~{at_full[lab]:.0f} -> ~{vox:.1f} voxels)"
                           for lab, vox in sorted(lost.items()))
        spacing = " x ".join(f"{v:.3g}" for v in lowres.spacing_zyx_mm)
        return [f"3d_lowres at {spacing} mm shrinks the median object of label(s) {listed} below "
                f"{floor:g} voxels: the low-resolution stage can hardly segment them, and the cascade must find "
                f"them at full resolution; find-best keeps 3d_fullres when the cascade does not pay off"]

    def _lowres(self, full_req: SizingRequest, full: Sizing, forward: list[int], fingerprint: Fingerprint,
                budget: HardwareBudget) -> Decision | tuple[SizingRequest, Sizing, list[float], Decision]:
        """nnU-Net's 3d_lowres search: raise the spacing 3 % per step until the patch covers enough."""
        median_vox = float(math.prod(full_req.median_shape))
        covered = full_covered = math.prod(full.patch_size) / median_vox
        threshold = self.lowres_creation_threshold
        inputs = {"fullres_patch": full.patch_size, "median_shape": full_req.median_shape, "coverage": covered}
        if covered >= threshold:
            return Decision("configuration[3d_lowres]", False, "fullres_patch_covers_enough",
                            f"the 3d_fullres patch {full.patch_size} covers {covered:.0%} of the median image "
                            f"(>= {threshold:.0%}), so no 3d_lowres or cascade is needed.", inputs)
        sp = list(full_req.spacing)
        low_med = list(full_req.median_shape)
        sizing, req, steps = None, None, 0
        while covered < threshold and steps < self.max_lowres_steps:
            sp = lowres_spacing_step(sp)
            steps += 1
            low_med = [f / s * m for f, s, m in zip(full_req.spacing, sp, full_req.median_shape)]
            req = replace(full_req, configuration=Configuration.LOWRES.value, spacing=sp,
                          median_shape=[float(round(m)) for m in low_med],
                          dataset_voxels=math.prod(low_med) * full_req.num_cases)
            sizing = self.size_configuration(req, fingerprint, budget)
            covered = math.prod(sizing.patch_size) / math.prod(low_med)
        shrink = median_vox / math.prod(low_med)
        inputs.update(steps=steps, lowres_spacing=sp, size_ratio=shrink)
        if sizing is None or req is None or shrink < self.lowres_min_size_ratio:
            return Decision("configuration[3d_lowres]", False, "lowres_too_close_to_fullres",
                            f"the 3d_fullres patch covers only {full_covered:.0%} "
                            f"of the median image, but the low-resolution images would be only {shrink:.2f}x smaller "
                            f"(< {self.lowres_min_size_ratio:g}x), so 3d_lowres is not worth training.", inputs)
        spacing_zyx = [float(s) for s in permute(sp, inverse_permutation(forward))]
        reason = (f"the 3d_fullres patch {full.patch_size} covers {full_covered:.0%} of the "
                  f"median image (< {threshold:.0%}): spacing raised 3 % per step ({steps} steps) to "
                  f"{' x '.join(f'{s:.3g}' for s in sp)} mm (transposed) where the patch {sizing.patch_size} covers "
                  f"{covered:.0%} of the {shrink:.1f}x smaller median image.")
        decision = Decision("lowres_spacing", spacing_zyx, "lowres_spacing_search", reason, inputs)
        return req, sizing, spacing_zyx, decision

    def _config_plan(self, req: SizingRequest, sizing: Sizing, spacing_zyx: list[float], median_zyx: list[float],
                     forward: list[int], normalization: list[ChannelNormalization],
                     resampling: ResamplingSpec) -> ConfigurationPlan:
        patch = [int(p) for p in sizing.patch_size]
        dummy_2d = req.dims == 3 and max(patch) / patch[0] > self.dummy_2d_aspect_threshold
        return ConfigurationPlan(
            name=req.configuration,
            data_identifier=data_identifier(spacing_zyx, forward, normalization, resampling),
            dims=req.dims, spacing_zyx_mm=[float(s) for s in spacing_zyx],
            transpose_forward=list(forward), transpose_backward=inverse_permutation(forward),
            median_shape_zyx=[int(round(m)) for m in median_zyx], patch_size=patch,
            batch_size=int(sizing.batch_size), normalization=list(normalization), resampling=resampling,
            network=sizing.network, foreground_oversample_fraction=self.foreground_oversample_fraction,
            mirror_axes=list(range(req.dims)), dummy_2d_augmentation=bool(dummy_2d),
            estimated_memory_gb=float(sizing.estimated_memory_gb),
            estimated_gflop_per_iteration=float(sizing.estimated_gflop_per_iteration),
            decisions=list(sizing.decisions))

    def _cascade(self, fullres: ConfigurationPlan, fingerprint: Fingerprint) -> ConfigurationPlan:
        """3d_cascade_fullres: 3d_fullres whose input adds one channel per foreground label (the 3d_lowres
        prediction, one-hot); same preprocessing folder, same patch and batch."""
        n_fg = len(fingerprint.labels_spec.foreground_labels)
        in_ch = len(fingerprint.channel_names) + n_fg
        net = replace(fullres.network, in_channels=in_ch)
        gflop = gflop_per_iteration(net, fullres.patch_size, fullres.batch_size)
        d = Decision("cascade", Configuration.LOWRES.value, "cascade_of_lowres",
                     f"copy of 3d_fullres whose input is the {len(fingerprint.channel_names)} image channel(s) plus "
                     f"the one-hot 3d_lowres prediction of {n_fg} foreground label(s) = {in_ch} channels.",
                     {"image_channels": len(fingerprint.channel_names), "foreground_labels": n_fg})
        return replace(fullres, name=Configuration.CASCADE_FULLRES.value, network=net,
                       estimated_gflop_per_iteration=gflop, previous_stage=Configuration.LOWRES.value,
                       next_stage=None, decisions=[d, *fullres.decisions])
