"""The default planner: nnU-Net v2's rules, with patch and batch sized for the hardware planned for.

* ``cuda``: nnU-Net's memory proxy, scaled linearly from its 8 GB reference to the GPU's usable
  memory (the smaller of total and free) with 10 % headroom; 32 base features.
* ``cpu``: sized to the compute budget: the estimated seconds per iteration x a target number of
  iterations must fit in the training-time budget; 16 base features; the training RAM estimate
  must fit in the available RAM.

Spacing, transpose, normalization and the configurations (2d, 3d_fullres, 3d_lowres + cascade)
are the base planner's nnU-Net v2 steps (:mod:`autoseg.planning.base`).
"""
from __future__ import annotations

import math
import statistics

from autoseg.errors import AutosegError
from autoseg.planning.base import Planner, Sizing, SizingRequest
from autoseg.planning.sampling import TINY_OBJECT_PATCH_FRACTION, tiny_object_labels
from autoseg.planning.memory import (conv_feature_map_size, estimate_gpu_memory_gb, estimate_training_ram_gb,
                                     CPU_NON_CONV_OVERHEAD, estimated_seconds_per_iteration_cpu, gflop_per_iteration,
                                     reference_proxy_for_memory, REFERENCE_BATCH_2D, REFERENCE_BATCH_3D)
from autoseg.planning.topology import (build_network_spec, initial_patch_size, num_pools, pool_and_conv_props,
                                       shrink_patch_once)
from autoseg.schemas import ConfigurationPlan, Decision, Fingerprint, HardwareBudget, NetworkSpec

MIN_BATCH_SIZE = 2
#: nnU-Net: one batch never covers more than 5 % of the dataset's voxels (overfitting precaution).
MAX_DATASET_FRACTION_PER_BATCH = 0.05

GPU_BASE_FEATURES = 32
GPU_MAX_FEATURES = {3: 320, 2: 512}
from autoseg.planning.measured import GPU_MEMORY_HEADROOM  # noqa: E402  (one constant for proxy and dry run)

CPU_BASE_FEATURES = 16
CPU_MAX_FEATURES = {3: 256, 2: 384}
#: Assumed when the budget has no time budget / no measured throughput.
DEFAULT_CPU_CONV_GFLOPS = 50.0  # raw conv throughput assumed when nothing was measured
#: Iterations a CPU training should reach within its time budget, and the least that is acceptable.
TARGET_ITERATIONS_CPU = 1500
MIN_ITERATIONS_CPU = 250
#: Fraction of the machine's RAM a CPU plan may size a training for (the rest: data loading, OS, other work).
RAM_HEADROOM = 0.75
#: Label warnings: absent in more than this fraction of cases; median object smaller than this
#: fraction of the patch volume; a label this many times rarer than another or under this share.
ABSENT_CASES_WARNING_FRACTION = 0.2
IMBALANCE_RATIO_WARNING = 100.0
RARE_LABEL_VOXEL_FRACTION = 0.001
#: A CPU patch keeps at least this many poolings (unless the median image is too small for them).
MIN_POOLS_CPU = 2


def _x(values) -> str:
    return " x ".join(str(int(v)) if float(v).is_integer() else f"{float(v):.1f}" for v in values)


class DefaultPlanner(Planner):
    """nnU-Net v2's rules; GPU plans fit the GPU's memory, CPU plans fit the training-time budget."""

    name = "default"
    description = ("nnU-Net v2 rules (spacing, normalization, 2d/3d_fullres/3d_lowres/cascade); patch and batch "
                   "sized to the GPU memory on cuda and to the training-time budget on CPU")

    # ------------------------------------------------------------------ sizing step

    def size_configuration(self, request: SizingRequest, fingerprint: Fingerprint,
                           budget: HardwareBudget) -> Sizing:
        """GPU memory sizing on ``cuda``, compute-budget sizing on ``cpu``."""
        if budget.device == "cuda":
            if budget.gpu_total_memory_gb is None or not budget.gpu_total_memory_gb > 0:
                raise AutosegError(f"the hardware budget says device 'cuda' but gives no GPU memory "
                                   f"(gpu_total_memory_gb={budget.gpu_total_memory_gb}); pass --gpu-memory-gb GB "
                                   f"to `autoseg plan`")
            # The GPU's total memory, not its momentary free memory: the plan depends on the hardware class
            # only (another process holding memory now must not change the plan; training checks what is free).
            total = float(budget.gpu_total_memory_gb)
            target = total * GPU_MEMORY_HEADROOM
            name = f" ({budget.gpu_name})" if budget.gpu_name else ""
            why = Decision("device", "cuda", "gpu_memory_budget",
                           f"planning for a CUDA GPU{name}: {total:.1f} GB x {GPU_MEMORY_HEADROOM:.0%} headroom = "
                           f"{target:.1f} GB for training (the total memory, not what happens to be free now).",
                           {"gpu_total_memory_gb": total, "headroom": GPU_MEMORY_HEADROOM})
            return self.size_for_gpu(request, target, why, round_batch_up=False)
        if budget.device == "cpu":
            return self.size_for_cpu(request, fingerprint, budget)
        raise AutosegError(f"the hardware budget names device '{budget.device}'; expected 'cuda' or 'cpu'. "
                           f"Pass --device cpu or --device cuda to `autoseg plan`")

    # ------------------------------------------------------------------ GPU

    def size_for_gpu(self, req: SizingRequest, memory_gb: float, why: Decision, *,
                     base_features: int = GPU_BASE_FEATURES, round_batch_up: bool = False) -> Sizing:
        """nnU-Net v2's patch/batch search against its memory proxy scaled to ``memory_gb``.

        ``round_batch_up``: nnU-Net rounds the batch to the nearest integer (may exceed the memory a
        little); the default planner rounds down so the estimate stays within ``memory_gb``.
        """
        dims, cap = req.dims, GPU_MAX_FEATURES[req.dims]
        ref = reference_proxy_for_memory(dims, memory_gb)
        ref_bs = REFERENCE_BATCH_3D if dims == 3 else REFERENCE_BATCH_2D
        initial = initial_patch_size(req.spacing, req.median_shape)
        kernels, strides, patch, div = pool_and_conv_props(req.spacing, initial)
        net = build_network_spec(dims, req.in_channels, req.num_classes, kernels, strides, base_features, cap)
        proxy = conv_feature_map_size(net, patch)
        shrinks, warnings = 0, []
        while proxy / ref_bs * MIN_BATCH_SIZE > ref:
            step = shrink_patch_once(req.spacing, patch, req.median_shape, div)
            if step is None:
                warnings.append(f"{req.configuration}: even the smallest patch {patch} exceeds the memory target "
                                f"{memory_gb:.1f} GB by the proxy; training may run out of GPU memory")
                break
            kernels, strides, patch, div = pool_and_conv_props(req.spacing, step[0])
            net = build_network_spec(dims, req.in_channels, req.num_classes, kernels, strides, base_features, cap)
            proxy = conv_feature_map_size(net, patch)
            shrinks += 1
        raw = ref / proxy * ref_bs
        by_memory = round(raw) if round_batch_up else math.floor(raw)
        by_dataset = round(req.dataset_voxels * MAX_DATASET_FRACTION_PER_BATCH / math.prod(patch))
        batch = max(min(by_memory, by_dataset), MIN_BATCH_SIZE)
        memory = estimate_gpu_memory_gb(proxy, batch, dims)
        gflop = gflop_per_iteration(net, patch, batch)
        decisions = [why, self._features_decision(net, base_features, cap, "gpu"), self._topology_decision(req, net)]
        decisions.append(Decision(
            "patch_size", patch, "memory_proxy_fit",
            f"start {_x(initial)} (256^{dims} voxel-volume box shaped by 1/spacing, clipped to the median "
            f"{_x(req.median_shape)}); shrunk {shrinks} time(s) along the axis with the largest patch/median ratio "
            f"until the proxy {proxy / 1e6:.0f}M x {MIN_BATCH_SIZE}/{ref_bs} <= {ref / 1e6:.0f}M "
            f"(nnU-Net's reference scaled to {memory_gb:.1f} GB); padded to multiples of {_x(div)}.",
            {"initial_patch": initial, "proxy": proxy, "reference_proxy": ref, "shrinks": shrinks}))
        decisions.append(Decision(
            "batch_size", batch, "memory_and_dataset_cap",
            f"batch {batch} = max({MIN_BATCH_SIZE}, min({'round' if round_batch_up else 'floor'}({ref / 1e6:.0f}M / "
            f"{proxy / 1e6:.1f}M x {ref_bs}) = {by_memory}, {by_dataset} patches = "
            f"{MAX_DATASET_FRACTION_PER_BATCH:.0%} of the dataset's voxels)).",
            {"by_memory": by_memory, "by_dataset": by_dataset}))
        decisions.append(Decision(
            "estimated_memory_gb", round(memory, 3), "nnunet_proxy_linear",
            f"estimated GPU memory {memory:.2f} GB = 8 GB x proxy {proxy / 1e6:.1f}M x batch {batch} / "
            f"(reference {ref / memory_gb * 8 / 1e6:.0f}M x batch {ref_bs}); target {memory_gb:.1f} GB.",
            {"proxy": proxy, "batch_size": batch}))
        decisions.append(self._compute_decision(gflop, batch))
        return Sizing(patch, batch, net, memory, gflop, decisions, warnings)

    # ------------------------------------------------------------------ CPU

    def size_for_cpu(self, req: SizingRequest, fingerprint: Fingerprint, budget: HardwareBudget) -> Sizing:
        """Largest nnU-Net-shaped patch whose estimated time x TARGET_ITERATIONS_CPU fits the time budget."""
        dims, cap = req.dims, CPU_MAX_FEATURES[req.dims]
        seconds = req.time_budget_s or self.default_cpu_time_budget_s
        gflops, overhead, source = _cpu_throughput(budget, dims)
        # The machine's RAM, not the momentary free RAM: a plan depends on the hardware class only, so the
        # same data planned twice on one machine gives the same plan (issue 16, item 8).
        ram_limit = float(budget.ram_total_gb) * RAM_HEADROOM
        decisions = [Decision(
            "device", "cpu", "cpu_compute_budget",
            f"planning for the CPU ({budget.cpu_cores} cores, {budget.ram_total_gb:.1f} GB RAM): patch "
            f"and batch are sized so that {TARGET_ITERATIONS_CPU} iterations fit in "
            f"{seconds:.0f} s per training"
            + ("" if req.time_budget_s else f" (no time budget given: {seconds / 60:g} minutes assumed)")
            + f" at {gflops:.0f} GFLOP/s ({source}).",
            {"time_budget_s": seconds, "cpu_gflops": gflops, "overhead": overhead, "ram_limit_gb": ram_limit,
             "target_iterations": TARGET_ITERATIONS_CPU})]

        def cost(net: NetworkSpec, patch: list[int], batch: int) -> tuple[float, float, float]:
            g = gflop_per_iteration(net, patch, batch)
            return (g, estimated_seconds_per_iteration_cpu(g, gflops, overhead),
                    estimate_training_ram_gb(net, patch, batch))

        def fits(net: NetworkSpec, patch: list[int], batch: int) -> bool:
            _, sec, ram = cost(net, patch, batch)
            return sec * TARGET_ITERATIONS_CPU <= seconds and ram <= ram_limit

        floor, floor_decision = self._patch_floor(req, fingerprint)
        initial = initial_patch_size(req.spacing, req.median_shape)
        kernels, strides, patch, div = pool_and_conv_props(req.spacing, initial)
        net = build_network_spec(dims, req.in_channels, req.num_classes, kernels, strides, CPU_BASE_FEATURES, cap)
        min_pools = min(MIN_POOLS_CPU, num_pools(strides))
        shrinks, at_floor = 0, False
        while not fits(net, patch, MIN_BATCH_SIZE):
            step = shrink_patch_once(req.spacing, patch, req.median_shape, div, floor=floor)
            if step is not None:
                k2, s2, p2, d2 = pool_and_conv_props(req.spacing, step[0])
                if num_pools(s2) >= min_pools:
                    kernels, strides, patch, div = k2, s2, p2, d2
                    net = build_network_spec(dims, req.in_channels, req.num_classes, kernels, strides,
                                             CPU_BASE_FEATURES, cap)
                    shrinks += 1
                    continue
            at_floor = True
            break
        by_dataset = round(req.dataset_voxels * MAX_DATASET_FRACTION_PER_BATCH / math.prod(patch))
        batch = MIN_BATCH_SIZE
        while batch + 1 <= by_dataset and fits(net, patch, batch + 1):
            batch += 1
        gflop, sec, ram = cost(net, patch, batch)
        iterations = int(seconds // sec) if sec > 0 else TARGET_ITERATIONS_CPU
        warnings = []
        if iterations < MIN_ITERATIONS_CPU:
            warnings.append(f"{req.configuration}: even the smallest sensible network (patch {patch}, batch {batch}, "
                            f"{CPU_BASE_FEATURES} base features) needs ~{sec:.1f} s per iteration, so only "
                            f"{iterations} iterations fit in {seconds:.0f} s (< {MIN_ITERATIONS_CPU}); give more "
                            f"time with --time-budget or expect lower accuracy")
        if ram > ram_limit:
            warnings.append(f"{req.configuration}: the training RAM estimate {ram:.1f} GB exceeds {ram_limit:.1f} GB "
                            f"({RAM_HEADROOM:.0%} of the machine's {budget.ram_total_gb:.1f} GB) even at patch "
                            f"{patch}; training may run out of memory: free RAM or use another machine")
        stop = ("reached the floor" if at_floor else
                f"{sec:.2f} s/iteration x {TARGET_ITERATIONS_CPU} <= {seconds:.0f} s and RAM fits")
        decisions += [self._features_decision(net, CPU_BASE_FEATURES, cap, "cpu"), self._topology_decision(req, net),
                      floor_decision]
        decisions.append(Decision(
            "patch_size", patch, "cpu_time_budget_fit",
            f"start {_x(initial)} (nnU-Net's box shaped by 1/spacing, clipped to the median {_x(req.median_shape)}); "
            f"shrunk {shrinks} time(s) along the axis with the largest patch/median ratio until {stop}.",
            {"initial_patch": initial, "shrinks": shrinks, "at_floor": at_floor}))
        decisions.append(Decision(
            "batch_size", batch, "cpu_time_linear_in_batch",
            f"batch {batch}: CPU time grows linearly with the batch, so it starts at {MIN_BATCH_SIZE} and grows only "
            f"while {TARGET_ITERATIONS_CPU} iterations still fit the budget and RAM (at most {max(by_dataset, 2)} "
            f"= {MAX_DATASET_FRACTION_PER_BATCH:.0%} of the dataset's voxels).", {"by_dataset": by_dataset}))
        decisions.append(Decision(
            "estimated_memory_gb", round(ram, 3), "training_ram_estimate",
            f"estimated training RAM {ram:.2f} GB (fp32 activations x 3 for backward, weights and optimizer state, "
            f"torch runtime) against {ram_limit:.1f} GB ({RAM_HEADROOM:.0%} of the machine's "
            f"{budget.ram_total_gb:.1f} GB).", {"ram_limit_gb": ram_limit}))
        decisions.append(self._compute_decision(gflop, batch, sec, gflops))
        decisions.append(Decision(
            "training_iterations", iterations, "iterations_in_budget",
            f"about {iterations} iterations fit in {seconds:.0f} s at {sec:.2f} s each (target "
            f"{TARGET_ITERATIONS_CPU}, minimum {MIN_ITERATIONS_CPU}).",
            {"seconds_per_iteration": sec, "time_budget_s": seconds}))
        return Sizing(patch, batch, net, ram, gflop, decisions, warnings)

    def _patch_floor(self, req: SizingRequest, fp: Fingerprint) -> tuple[list[int], Decision]:
        """Smallest patch a CPU plan may use: the median object's box or 1/8 of the median image,
        whichever is smaller (per axis, patch-axis order)."""
        real_axes = [1, 2] if fp.ndim == 2 else [0, 1, 2]
        spacing_med = [statistics.median(c.spacing_zyx_mm[a] for c in fp.cases) for a in range(3)]
        comp = max((float(ls.component_size_voxels_median) for ls in fp.label_stats), default=0.0)
        size = comp * math.prod(spacing_med[a] for a in real_axes)  # mm^3 (mm^2 for 2D data)
        edge_mm = size ** (1.0 / len(real_axes)) if size > 0 else 0.0
        obj = [max(1, min(math.ceil(edge_mm / s), math.ceil(m))) for s, m in zip(req.spacing, req.median_shape)]
        eighth = [max(1, math.ceil(m * 8 ** (-1.0 / req.dims))) for m in req.median_shape]
        floor = obj if math.prod(obj) <= math.prod(eighth) else eighth
        which = "the median object's box" if floor is obj else "1/8 of the median image"
        reason = (f"the CPU patch is not shrunk below {_x(floor)} voxels ({which}): the smaller of the box around the "
                  f"median object ({comp:.0f} voxels, {edge_mm:.1f} mm edge) = {_x(obj)} and 1/8 of the median image "
                  f"= {_x(eighth)}; and not below {MIN_POOLS_CPU} poolings.")
        return floor, Decision("patch_floor", floor, "median_object_or_eighth_image", reason,
                               {"component_size_voxels_median": comp, "object_box": obj, "eighth_image_box": eighth})

    # ------------------------------------------------------------------ shared decisions

    def _features_decision(self, net: NetworkSpec, base: int, cap: int, device: str) -> Decision:
        feats = net.features_per_stage
        if device == "cpu":
            reason = (f"{len(feats)} stages, {base} base features doubling up to {cap} ({feats}): half of nnU-Net's "
                      f"32 because compute per iteration scales with width^2, so ~4x less work per iteration on CPU.")
        else:
            reason = f"{len(feats)} stages, {base} base features doubling up to {cap} ({feats}): nnU-Net's GPU default."
        return Decision("features_per_stage", feats, f"{device}_base_{base}", reason, {"base": base, "cap": cap})

    def _topology_decision(self, req: SizingRequest, net: NetworkSpec) -> Decision:
        pools = [sum(1 for st in net.strides if st[a] == 2) for a in range(req.dims)]
        k1 = [a for a in range(req.dims) if net.kernel_sizes[0][a] == 1]
        reason = (f"{pools} poolings per patch axis at spacing {[round(s, 3) for s in req.spacing]} mm: an axis is "
                  f"pooled while its feature map stays >= 8 voxels and its spacing is < 2x the finest; "
                  + (f"kernel 1 on axis {k1} at the top stage(s) until its spacing is within 2x of the others."
                     if k1 else "3-voxel kernels on every axis."))
        return Decision("topology", {"strides": net.strides, "kernel_sizes": net.kernel_sizes},
                        "spacing_aware_pooling", reason, {"pools_per_axis": pools})

    def _compute_decision(self, gflop: float, batch: int, sec: float | None = None,
                          gflops: float | None = None) -> Decision:
        reason = f"{gflop:.1f} GFLOP per training iteration (forward + backward, batch {batch})"
        if sec is not None:
            reason += f" -> ~{sec:.2f} s per iteration at {gflops:.0f} GFLOP/s (non-conv work included)"
        return Decision("compute", round(gflop, 3), "analytic_flops", reason + ".",
                        {"gflop_per_iteration": gflop, "seconds_per_iteration": sec})

    # ------------------------------------------------------------------ warnings

    def dataset_warnings(self, fingerprint: Fingerprint, configurations: dict[str, ConfigurationPlan]) -> list[str]:
        """Warnings from the label statistics: absent labels, tiny objects, class imbalance."""
        return label_warnings(fingerprint, configurations)


def label_warnings(fp: Fingerprint, configurations: dict[str, ConfigurationPlan]) -> list[str]:
    """Readable warnings from ``fp.label_stats`` measured against the main configuration's patch
    (3d_fullres, else 2d)."""
    out: list[str] = []
    n = len(fp.cases)
    main = configurations.get("3d_fullres") or configurations.get("2d")
    total_voxels = sum(math.prod(c.shape_after_crop_zyx) for c in fp.cases)
    totals: dict[int, int] = {}
    tiny = tiny_object_labels(fp, main) if main is not None else {}
    for ls in fp.label_stats:
        totals[ls.label] = sum(int(v) for v in ls.voxels_per_case.values())
        absent = len(ls.absent_in_cases)
        if n and absent == n:
            out.append(f"label {ls.label} ({ls.name}) is absent in every training case: the network can never "
                       f"learn it and will not predict it; check the label files, or remove the label from "
                       f"dataset.json")
        elif n and absent / n > ABSENT_CASES_WARNING_FRACTION:
            out.append(f"label {ls.label} ({ls.name}) is absent in {absent} of {n} cases "
                       f"({absent / n:.0%} > {ABSENT_CASES_WARNING_FRACTION:.0%}): check the labels; training sees "
                       f"it less often and its Dice is undefined on empty cases")
        if ls.label in tiny:
            vox, patch_vox = tiny[ls.label], math.prod(main.patch_size)
            out.append(f"label {ls.label} ({ls.name}) has tiny objects: the median component (~{vox:.0f} voxels) "
                       f"is {vox / patch_vox:.2%} of the {main.name} patch {main.patch_size} (< "
                       f"{TINY_OBJECT_PATCH_FRACTION:.1%}); watch its validation Dice. How batches sample it: the "
                       f"decision foreground_oversampling[{main.name}] (`autoseg plan --explain`)")
        if total_voxels and 0 < totals[ls.label] < RARE_LABEL_VOXEL_FRACTION * total_voxels:
            out.append(f"label {ls.label} ({ls.name}) covers only {totals[ls.label] / total_voxels:.3%} of the "
                       f"cropped image voxels (< {RARE_LABEL_VOXEL_FRACTION:.1%}): strong imbalance against the "
                       f"background")
    names = {ls.label: ls.name for ls in fp.label_stats}
    present = {lab: t for lab, t in totals.items() if t > 0}
    if len(present) >= 2:
        big = max(present, key=lambda lab: (present[lab], -lab))
        small = min(present, key=lambda lab: (present[lab], lab))
        if present[big] / present[small] > IMBALANCE_RATIO_WARNING:
            out.append(f"strong class imbalance: label {big} ({names[big]}) has {present[big] / present[small]:.0f}x "
                       f"the voxels of label {small} ({names[small]}) (> {IMBALANCE_RATIO_WARNING:.0f}x); the Dice "
                       f"term of the loss balances classes, watch the rare class' validation Dice")
    return out


def _cpu_throughput(budget: HardwareBudget, dims: int) -> tuple[float, float, str]:
    """(GFLOP/s, overhead multiplier, where the number comes from) for CPU time estimates.

    Preferred: the effective rate measured on whole U-Net training steps of this dimensionality
    (hardware.measure_cpu_unet_gflops; overheads included, the faster of fp32/bf16). Else the raw
    conv rate with the non-conv overhead factor; else an assumed conv rate.
    """
    key = f"{dims}d"
    if budget.cpu_unet_gflops.get(key):
        precision = budget.cpu_unet_precision.get(key, "fp32")
        source = ("given with --cpu-gflops" if precision == "given"
                  else f"measured on whole {key} U-Net training steps in {precision}")
        return float(budget.cpu_unet_gflops[key]), 1.0, source
    if budget.cpu_conv_gflops:
        return (float(budget.cpu_conv_gflops), CPU_NON_CONV_OVERHEAD,
                f"measured 3D conv throughput, x{CPU_NON_CONV_OVERHEAD} for non-conv work")
    return (DEFAULT_CPU_CONV_GFLOPS, CPU_NON_CONV_OVERHEAD,
            f"not measured: {DEFAULT_CPU_CONV_GFLOPS:.0f} GFLOP/s assumed, x{CPU_NON_CONV_OVERHEAD} for non-conv work")
