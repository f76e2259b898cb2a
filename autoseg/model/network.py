"""The plain-conv U-Net (nnU-Net's ``PlainConvUNet``), built from a :class:`NetworkSpec` alone.

Input tensors are ``(B, C, *spatial)`` with ``spatial`` = ``(Z, Y, X)`` for a 3D spec and ``(Y, X)``
for a 2D spec (the trainer drops the dummy axis of ``(C, 1, Y, X)`` 2D arrays). Every per-axis list in
the spec (kernel sizes, strides) is in that same spatial order.

Architecture (numbers from the spec, nothing else):

* encoder stage ``s``: ``n_conv_per_stage_encoder[s]`` blocks of
  conv(``kernel_sizes[s]``, padding ``k // 2``, bias) -> norm -> nonlin; the first conv of the stage
  has stride ``strides[s]`` (strided-conv downsampling, stage 0 has stride 1);
* decoder stage for ``s = n-2 .. 0``: ConvTranspose(``features[s+1] -> features[s]``,
  kernel = stride = ``strides[s+1]``), concatenation with the encoder skip of stage ``s``,
  ``n_conv_per_stage_decoder[s]`` conv blocks, and a 1x1 segmentation head (``num_classes``).

With deep supervision the forward pass returns ``n_stages - 1`` logits tensors, highest resolution
first; output ``i`` has spatial size ``input / prod(strides[0..i])`` per axis. Without it, only the
full-resolution logits tensor. Module names (``encoder.stages``, ``decoder.transpconvs``,
``decoder.stages``, ``decoder.seg_layers``) are stable so that weights can be transferred while
skipping the segmentation heads.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import AutosegError, unknown_name_error
from ..schemas import NetworkSpec

logger = logging.getLogger(__name__)

NormFactory = Callable[[int, int], nn.Module]  # (dims, channels) -> module
NonlinFactory = Callable[[float], nn.Module]  # (negative_slope) -> module

_NORMS: dict[str, NormFactory] = {}
_NONLINS: dict[str, NonlinFactory] = {}


def register_norm(name: str) -> Callable[[NormFactory], NormFactory]:
    """Register ``factory(dims, channels) -> nn.Module`` as the normalization called ``name``."""

    def deco(factory: NormFactory) -> NormFactory:
        _NORMS[name] = factory
        return factory

    return deco


def register_nonlin(name: str) -> Callable[[NonlinFactory], NonlinFactory]:
    """Register ``factory(negative_slope) -> nn.Module`` as the nonlinearity called ``name``."""

    def deco(factory: NonlinFactory) -> NonlinFactory:
        _NONLINS[name] = factory
        return factory

    return deco


@register_norm("instance")
def _instance_norm(dims: int, channels: int) -> nn.Module:
    cls = nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d
    return cls(channels, eps=1e-5, affine=True)


@register_norm("batch")
def _batch_norm(dims: int, channels: int) -> nn.Module:
    cls = nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d
    return cls(channels, eps=1e-5, affine=True)


@register_nonlin("leaky_relu")
def _leaky_relu(negative_slope: float) -> nn.Module:
    return nn.LeakyReLU(negative_slope=negative_slope, inplace=True)


@register_nonlin("relu")
def _relu(negative_slope: float) -> nn.Module:  # noqa: ARG001 - same signature as the others
    return nn.ReLU(inplace=True)


def _norm_factory(name: str) -> NormFactory:
    if name not in _NORMS:
        raise unknown_name_error("normalization layer", name, _NORMS,
                                 hint="Fix 'network.norm' in plans.json or register it with register_norm().")
    return _NORMS[name]


def _nonlin_factory(name: str) -> NonlinFactory:
    if name not in _NONLINS:
        raise unknown_name_error("nonlinearity", name, _NONLINS,
                                 hint="Fix 'network.nonlin' in plans.json or register it with register_nonlin().")
    return _NONLINS[name]


def _conv_cls(dims: int) -> type[nn.Module]:
    return nn.Conv3d if dims == 3 else nn.Conv2d


def _transp_cls(dims: int) -> type[nn.Module]:
    return nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d


class ConvBlocks(nn.Sequential):
    """``n`` blocks of conv -> norm -> nonlin; the first conv has stride ``first_stride``."""

    def __init__(self, dims: int, n: int, in_ch: int, out_ch: int, kernel: Sequence[int],
                 first_stride: Sequence[int], norm: NormFactory, nonlin: NonlinFactory,
                 negative_slope: float):
        layers: list[nn.Module] = []
        for i in range(n):
            layers.append(nn.Sequential(
                _conv_cls(dims)(in_ch if i == 0 else out_ch, out_ch, kernel_size=tuple(kernel),
                                stride=tuple(first_stride) if i == 0 else 1,
                                padding=tuple(k // 2 for k in kernel), bias=True),
                norm(dims, out_ch),
                nonlin(negative_slope),
            ))
        super().__init__(*layers)


class PlainConvUNet(nn.Module):
    """Plain-conv U-Net; see the module docstring for the architecture and output contract."""

    def __init__(self, spec: NetworkSpec):
        super().__init__()
        _check_spec(spec)
        self.spec = spec
        self.dims = spec.dims
        self.deep_supervision = bool(spec.deep_supervision)
        n = len(spec.features_per_stage)
        norm, nonlin = _norm_factory(spec.norm), _nonlin_factory(spec.nonlin)
        feats = spec.features_per_stage
        # product of strides up to and including each stage: input must be divisible by the last
        self.cumulative_strides: list[list[int]] = []
        acc = [1] * spec.dims
        for s in spec.strides:
            acc = [a * int(v) for a, v in zip(acc, s)]
            self.cumulative_strides.append(list(acc))

        self.encoder = nn.Module()
        self.encoder.stages = nn.ModuleList(
            ConvBlocks(spec.dims, spec.n_conv_per_stage_encoder[s],
                       spec.in_channels if s == 0 else feats[s - 1], feats[s],
                       spec.kernel_sizes[s], spec.strides[s], norm, nonlin, spec.negative_slope)
            for s in range(n))
        self.decoder = nn.Module()
        # decoder index j = 0 is the coarsest decoder stage (it upsamples from the bottleneck)
        dec_stages = list(range(n - 2, -1, -1))
        self.decoder.transpconvs = nn.ModuleList(
            _transp_cls(spec.dims)(feats[s + 1], feats[s], kernel_size=tuple(spec.strides[s + 1]),
                                   stride=tuple(spec.strides[s + 1]), bias=True)
            for s in dec_stages)
        self.decoder.stages = nn.ModuleList(
            ConvBlocks(spec.dims, spec.n_conv_per_stage_decoder[s], 2 * feats[s], feats[s],
                       spec.kernel_sizes[s], [1] * spec.dims, norm, nonlin, spec.negative_slope)
            for s in dec_stages)
        self.decoder.seg_layers = nn.ModuleList(
            _conv_cls(spec.dims)(feats[s], spec.num_classes, kernel_size=1, stride=1, padding=0, bias=True)
            for s in dec_stages)
        self.apply(_init_he)

    def set_deep_supervision(self, enabled: bool) -> None:
        """Return all ``n_stages - 1`` outputs (True) or only the full-resolution logits (False)."""
        self.deep_supervision = bool(enabled)

    def check_input_size(self, spatial: Sequence[int]) -> None:
        """Raise ValueError unless every spatial axis is divisible by the product of all strides."""
        total = self.cumulative_strides[-1]
        if len(spatial) != self.dims or any(int(a) % t for a, t in zip(spatial, total)):
            raise ValueError(
                f"network input spatial size {tuple(int(a) for a in spatial)} must have {self.dims} axes, each "
                f"divisible by the product of the strides {tuple(total)}; pad the input or use the "
                f"planned patch size")

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``x``: (B, in_channels, *spatial) -> logits (B, num_classes, *spatial) or a list of them."""
        if x.ndim != self.dims + 2:
            raise ValueError(f"expected a {self.dims + 2}D input (B, C, *spatial) for a {self.dims}D network, "
                             f"found shape {tuple(x.shape)}")
        self.check_input_size(x.shape[2:])
        skips: list[torch.Tensor] = []
        for stage in self.encoder.stages:
            x = stage(x)
            skips.append(x)
        x = skips[-1]
        outputs: list[torch.Tensor] = []
        n_dec = len(self.decoder.stages)
        for j in range(n_dec):
            x = self.decoder.transpconvs[j](x)
            x = torch.cat((x, skips[-(j + 2)]), dim=1)
            x = self.decoder.stages[j](x)
            if self.deep_supervision or j == n_dec - 1:
                outputs.append(self.decoder.seg_layers[j](x))
        if self.deep_supervision:
            return outputs[::-1]  # highest resolution first
        return outputs[-1]


def _init_he(module: nn.Module) -> None:
    """nnU-Net's InitWeights_He(1e-2): Kaiming normal for conv weights, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _check_spec(spec: NetworkSpec) -> None:
    """Reject an inconsistent spec with a message naming the field (it comes from plans.json)."""
    where = "plans.json network spec"
    problems: list[str] = []
    if spec.dims not in (2, 3):
        problems.append(f"dims must be 2 or 3, found {spec.dims}")
    n = len(spec.features_per_stage)
    if n < 2:
        problems.append(f"features_per_stage needs at least 2 stages, found {n}")
    for name, val in (("kernel_sizes", spec.kernel_sizes), ("strides", spec.strides),
                      ("n_conv_per_stage_encoder", spec.n_conv_per_stage_encoder)):
        if len(val) != n:
            problems.append(f"{name} has {len(val)} entries but features_per_stage has {n}")
    if len(spec.n_conv_per_stage_decoder) != n - 1:
        problems.append(f"n_conv_per_stage_decoder has {len(spec.n_conv_per_stage_decoder)} entries, "
                        f"expected {n - 1} (one per decoder stage)")
    for name, val in (("kernel_sizes", spec.kernel_sizes), ("strides", spec.strides)):
        for s, per_axis in enumerate(val):
            if len(per_axis) != spec.dims or any(int(v) < 1 for v in per_axis):
                problems.append(f"{name}[{s}] = {list(per_axis)} must have {spec.dims} positive entries")
    if any(int(f) < 1 for f in spec.features_per_stage):
        problems.append(f"features_per_stage {spec.features_per_stage} must be positive")
    if any(int(c) < 1 for c in list(spec.n_conv_per_stage_encoder) + list(spec.n_conv_per_stage_decoder)):
        problems.append("every stage needs at least one conv (n_conv_per_stage_* >= 1)")
    if spec.in_channels < 1 or spec.num_classes < 2:
        problems.append(f"in_channels ({spec.in_channels}) must be >= 1 and num_classes "
                        f"({spec.num_classes}) >= 2 (background included)")
    if problems:
        raise AutosegError(f"{where} is inconsistent: " + "; ".join(problems)
                           + ". Re-run `autoseg plan` or fix the 'network' entry by hand.")


def build_network(spec: NetworkSpec) -> PlainConvUNet:
    """Build the plain-conv U-Net described by ``spec`` (numbers only); weights He-initialised.

    Raises AutosegError for an inconsistent spec or an unknown ``norm``/``nonlin`` name.
    """
    model = PlainConvUNet(spec)
    logger.debug("built %dD U-Net with %d stages, %d parameters", spec.dims, len(spec.features_per_stage),
                 count_parameters(model))
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (elements) of ``model``."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def output_strides(spec: NetworkSpec) -> list[list[int]]:
    """Per deep-supervision output (highest resolution first), the downsampling factor per spatial axis.

    Output ``i`` has spatial size ``input_size // output_strides(spec)[i]``; targets for deep
    supervision are downsampled by these factors (nearest neighbour).
    """
    acc = [1] * spec.dims
    out: list[list[int]] = []
    for s in spec.strides[:-1]:
        acc = [a * int(v) for a, v in zip(acc, s)]
        out.append(list(acc))
    return out


def total_stride(spec: NetworkSpec) -> list[int]:
    """Product of all strides per spatial axis: every network input size must be a multiple of it."""
    return [math.prod(int(s[a]) for s in spec.strides) for a in range(spec.dims)]
