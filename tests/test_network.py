"""Tests for autoseg.model.network: shapes, deep supervision, init, errors."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from autoseg.errors import AutosegError, UnknownNameError
from autoseg.schemas import NetworkSpec
from autoseg.model.network import (build_network, count_parameters, output_strides, total_stride)


def spec_3d(**kw) -> NetworkSpec:
    base = dict(dims=3, in_channels=2, num_classes=3, features_per_stage=[4, 8, 16],
                kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
                n_conv_per_stage_encoder=[2, 2, 2], n_conv_per_stage_decoder=[2, 2])
    base.update(kw)
    return NetworkSpec(**base)


def spec_2d(**kw) -> NetworkSpec:
    base = dict(dims=2, in_channels=1, num_classes=2, features_per_stage=[4, 8, 16, 16],
                kernel_sizes=[[3, 3]] * 4, strides=[[1, 1], [2, 2], [2, 2], [2, 2]],
                n_conv_per_stage_encoder=[2, 2, 2, 2], n_conv_per_stage_decoder=[1, 1, 1])
    base.update(kw)
    return NetworkSpec(**base)


def test_3d_anisotropic_deep_supervision_shapes():
    torch.manual_seed(0)
    net = build_network(spec_3d())
    x = torch.randn(2, 2, 4, 8, 12)
    out = net(x)
    assert isinstance(out, list) and len(out) == 2  # n_stages - 1
    assert out[0].shape == (2, 3, 4, 8, 12)  # highest resolution first
    assert out[1].shape == (2, 3, 4, 4, 6)  # after stride [1, 2, 2]
    assert output_strides(spec_3d()) == [[1, 1, 1], [1, 2, 2]]
    assert total_stride(spec_3d()) == [2, 4, 4]


def test_2d_shapes_and_toggle_deep_supervision():
    net = build_network(spec_2d())
    x = torch.randn(1, 1, 16, 24)
    out = net(x)
    assert [tuple(o.shape) for o in out] == [(1, 2, 16, 24), (1, 2, 8, 12), (1, 2, 4, 6)]
    net.set_deep_supervision(False)
    single = net(x)
    assert isinstance(single, torch.Tensor) and single.shape == (1, 2, 16, 24)
    # the full-resolution output is the same computation with and without deep supervision
    torch.testing.assert_close(single, out[0])


def test_spec_without_deep_supervision_returns_tensor():
    net = build_network(spec_3d(deep_supervision=False))
    assert net(torch.randn(1, 2, 4, 8, 8)).shape == (1, 3, 4, 8, 8)


def test_parameter_count_depends_on_features():
    small = count_parameters(build_network(spec_3d()))
    big = count_parameters(build_network(spec_3d(features_per_stage=[8, 16, 32])))
    assert 0 < small < big


def test_structure_and_init():
    net = build_network(spec_3d())
    first = net.encoder.stages[1][0][0]
    assert isinstance(first, torch.nn.Conv3d) and first.stride == (1, 2, 2) and first.padding == (1, 1, 1)
    assert net.encoder.stages[0][0][0].kernel_size == (1, 3, 3) and net.encoder.stages[0][0][0].padding == (0, 1, 1)
    norm = net.encoder.stages[0][0][1]
    assert isinstance(norm, torch.nn.InstanceNorm3d) and norm.affine and norm.eps == 1e-5
    act = net.encoder.stages[0][0][2]
    assert isinstance(act, torch.nn.LeakyReLU) and act.negative_slope == 0.01
    tc = net.decoder.transpconvs[0]  # coarsest decoder stage: 16 -> 8, kernel = stride = [2, 2, 2]
    assert tc.in_channels == 16 and tc.out_channels == 8 and tc.stride == (2, 2, 2) and tc.kernel_size == (2, 2, 2)
    assert net.decoder.stages[0][0][0].in_channels == 16  # concatenated skip
    assert net.decoder.seg_layers[-1].kernel_size == (1, 1, 1)
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            assert torch.count_nonzero(m.bias) == 0
    w = net.encoder.stages[1][1][0].weight  # fan_in = 8 * 27; He std = sqrt(2 / (1 + 0.01^2) / fan_in)
    expected = (2 / (1 + 1e-4) / (8 * 27)) ** 0.5
    assert abs(w.std().item() - expected) / expected < 0.15


def test_backward_produces_gradients():
    net = build_network(spec_2d())
    out = net(torch.randn(2, 1, 16, 16))
    sum(o.float().mean() for o in out).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None for g in grads)
    assert any(torch.count_nonzero(g) > 0 for g in grads)


def test_indivisible_input_raises():
    net = build_network(spec_3d())
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 2, 3, 8, 8))  # z must be a multiple of 2
    with pytest.raises(ValueError, match="5D input"):
        net(torch.randn(1, 2, 8, 8))


def test_unknown_names_and_bad_spec():
    with pytest.raises(UnknownNameError, match="instance"):
        build_network(spec_3d(norm="instnce"))
    with pytest.raises(UnknownNameError, match="leaky_relu"):
        build_network(spec_3d(nonlin="leaky"))
    with pytest.raises(AutosegError, match="n_conv_per_stage_decoder"):
        build_network(spec_3d(n_conv_per_stage_decoder=[2, 2, 2]))
    with pytest.raises(AutosegError, match="kernel_sizes"):
        build_network(spec_3d(kernel_sizes=[[3, 3]] * 3))


def test_channels_last_input_works():
    net = build_network(spec_2d())
    x = torch.randn(2, 1, 16, 16).to(memory_format=torch.channels_last)
    net.set_deep_supervision(False)
    y = net(x)
    torch.testing.assert_close(y, net(x.contiguous()))
    assert dataclasses.asdict(net.spec)["dims"] == 2
