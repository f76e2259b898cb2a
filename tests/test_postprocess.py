"""Postprocessing on hand-made label maps: applying steps, and the "never make a class worse" learning."""
from __future__ import annotations

import numpy as np
import pytest

from autoseg.errors import AutosegError
from autoseg.evaluation import evaluate_case
from autoseg.inference.postprocess import apply_postprocessing
from autoseg.inference.postprocess_learning import determine_postprocessing, foreground_mean
from autoseg.schemas import PostprocessingStep

SPACING = (1.0, 1.0, 1.0)


def _dice_after(cases, steps, labels):
    """Per-class mean Dice (defined cases only) after applying ``steps`` to every case."""
    per_class = {str(v): [] for v in labels}
    for seg, ref, sp in cases.values():
        res = evaluate_case(apply_postprocessing(seg, steps), ref, labels, sp)
        for k in per_class:
            if res[k]["dice"] is not None:
                per_class[k].append(res[k]["dice"])
    return {k: float(np.mean(v)) for k, v in per_class.items()}


# ----------------------------------------------------------------------------- apply


def test_apply_keeps_largest_components_and_leaves_input_untouched():
    seg = np.zeros((6, 10, 10), np.uint8)
    seg[0:3, 0:3, 0:3] = 1  # 27 voxels of label 1
    seg[0:3, 3:5, 0:3] = 2  # touching label 2: one foreground object with label 1
    seg[5, 8, 8] = 1  # far away, one voxel of label 1
    seg[5, 0, 9] = 2  # far away, one voxel of label 2
    before = seg.copy()
    out = apply_postprocessing(seg, [PostprocessingStep("largest_component_foreground")])
    assert np.array_equal(seg, before) and out.dtype == seg.dtype
    assert out[5, 8, 8] == 0 and out[5, 0, 9] == 0
    assert np.count_nonzero(out == 1) == 27 and np.count_nonzero(out == 2) == 18

    per_label = apply_postprocessing(seg, [PostprocessingStep("largest_component", labels=[2])])
    assert per_label[5, 0, 9] == 0 and per_label[5, 8, 8] == 1  # only label 2 touched


def test_full_connectivity_in_3d_and_in_plane_for_2d():
    seg3 = np.zeros((3, 5, 5), np.uint8)
    seg3[0, 0, 0] = seg3[1, 1, 1] = 1  # corner-touching: one component with 26-connectivity
    seg3[2, 4, 4] = 1  # not touching anything: a second component
    out = apply_postprocessing(seg3, [PostprocessingStep("remove_small_components", labels=[1],
                                                         min_size_voxels={"1": 2})])
    assert out[0, 0, 0] == 1 and out[1, 1, 1] == 1 and out[2, 4, 4] == 0

    seg2 = np.zeros((1, 6, 6), np.uint8)
    seg2[0, 0, 0] = seg2[0, 1, 1] = seg2[0, 2, 2] = 1  # diagonal chain: one 8-connected component
    seg2[0, 5, 4:6] = 1  # a second component of two pixels
    out2 = apply_postprocessing(seg2, [PostprocessingStep("largest_component", labels=[1])])
    assert out2.shape == (1, 6, 6)
    assert out2[0, 2, 2] == 1 and out2[0, 5, 5] == 0 and np.count_nonzero(out2) == 3


def test_steps_apply_in_order():
    seg = np.zeros((1, 12, 12), np.uint8)
    seg[0, 0:2, 0:2] = 1  # 4 pixels
    seg[0, 6:9, 6:9] = 1  # 9 pixels
    largest = PostprocessingStep("largest_component", labels=[1])
    remove = PostprocessingStep("remove_small_components", labels=[1], min_size_voxels={"1": 10})
    # largest first keeps the 9-pixel square, which the size filter then removes
    assert np.count_nonzero(apply_postprocessing(seg, [largest, remove])) == 0
    # the size filter first removes both, nothing is left for "largest"
    assert np.count_nonzero(apply_postprocessing(seg, [remove, largest])) == 0
    small = PostprocessingStep("remove_small_components", labels=[1], min_size_voxels={"1": 5})
    assert np.count_nonzero(apply_postprocessing(seg, [small])) == 9


def test_unknown_step_kind_is_a_user_error():
    with pytest.raises(AutosegError, match="largest_component_foreground"):
        apply_postprocessing(np.zeros((1, 2, 2), np.uint8), [PostprocessingStep("fill_holes")])


# ----------------------------------------------------------------------------- determine


def _case_with_spurious_blobs():
    ref = np.zeros((6, 12, 12), np.uint8)
    ref[1:4, 1:4, 1:4] = 1
    ref[1:4, 4:6, 1:4] = 2  # touches label 1: one foreground object
    seg = ref.copy()
    seg[5, 10, 10] = 1  # false positives far away, one per label
    seg[5, 0, 11] = 2
    return seg, ref


def test_step_that_improves_every_class_is_accepted():
    cases = {f"c{i}": (*_case_with_spurious_blobs(), SPACING) for i in range(2)}
    steps, before, after = determine_postprocessing(cases, [1, 2])
    assert [s.kind for s in steps] == ["largest_component_foreground"]
    assert "foreground Dice" in steps[0].reason and "->" in steps[0].reason
    assert before["1"] < 1.0 and before["2"] < 1.0
    assert after == pytest.approx({"1": 1.0, "2": 1.0})
    assert _dice_after(cases, steps, [1, 2]) == pytest.approx(after)


def test_step_that_hurts_one_class_is_rejected():
    ref = np.zeros((6, 14, 14), np.uint8)
    ref[0:3, 0:3, 0:3] = 1  # label 1 has two real objects
    ref[0:2, 10:12, 10:12] = 1
    ref[4:6, 5:8, 5:8] = 2  # label 2 has one
    seg = ref.copy()
    seg[0, 13, 0] = 2  # and one spurious voxel of label 2
    cases = {"a": (seg, ref, SPACING), "b": (seg.copy(), ref.copy(), SPACING)}
    steps, before, after = determine_postprocessing(cases, [1, 2])
    # largest foreground component would delete label 1's second object; largest of label 1 too
    assert [(s.kind, s.labels) for s in steps] == [("largest_component", [2])]
    assert after["1"] == pytest.approx(before["1"]) == pytest.approx(1.0)
    assert after["2"] > before["2"] and after["2"] == pytest.approx(1.0)
    assert foreground_mean(after) > foreground_mean(before)
    assert _dice_after(cases, steps, [1, 2]) == pytest.approx(after)


def test_minimum_size_is_learned_to_remove_small_false_positives():
    cases = {}
    for i in range(3):
        ref = np.zeros((8, 16, 16), np.uint8)
        ref[0:4, 0:4, 0:4] = 1  # 64 voxels
        ref[5:7, 10:12, 10:12] = 1  # a second real object of 8 voxels
        seg = ref.copy()
        seg[7, 0, 15] = 1  # tiny false positives (1 voxel each, and a 2-voxel one)
        seg[0, 15, 0] = 1
        seg[4 + (i % 2), 15, 7:9] = 1
        cases[f"c{i}"] = (seg, ref, SPACING)
    steps, before, after = determine_postprocessing(cases, [1])
    assert [s.kind for s in steps] == ["remove_small_components"]  # "largest" would drop the 8-voxel object
    size = steps[0].min_size_voxels["1"]
    assert 2 < size <= 8  # removes the 1- and 2-voxel false positives, keeps the 8-voxel object
    assert before["1"] < 1.0 and after["1"] == pytest.approx(1.0)
    assert "voxels" in steps[0].reason and f"{before['1']:.4f}" in steps[0].reason
    assert _dice_after(cases, steps, [1]) == pytest.approx(after)


def test_nothing_to_gain_gives_no_steps_and_shape_mismatch_names_the_case():
    ref = np.zeros((2, 5, 5), np.uint8)
    ref[0, 1:3, 1:3] = 1
    steps, before, after = determine_postprocessing({"x": (ref.copy(), ref, SPACING)}, [0, 1])
    assert steps == [] and before == after == {"1": 1.0}
    with pytest.raises(AutosegError, match="case bad"):
        determine_postprocessing({"bad": (np.zeros((2, 5, 4), np.uint8), ref, SPACING)}, [1])
