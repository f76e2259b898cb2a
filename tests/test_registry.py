"""Planner registry: entry points / built-ins, @register_planner, unknown names, broken plugins."""
from __future__ import annotations

import importlib.metadata

import pytest

from autoseg.errors import AutosegError, UnknownNameError
from autoseg.planning import registry
from autoseg.planning.base import Planner
from autoseg.planning.registry import available_planners, get_planner, register_planner
from planners.default import DefaultPlanner
from planners.nnunet_v2 import NnUNetV2Planner


@pytest.fixture
def fresh_registry(monkeypatch):
    """Forget what the registry has discovered, loaded and registered (restored after the test)."""
    monkeypatch.setattr(registry, "_discovered", None)
    monkeypatch.setattr(registry, "_loaded", {})
    monkeypatch.setattr(registry, "_registered", {})
    return monkeypatch


def _entry_points(*eps):
    def fake(group=None, **kwargs):
        return [ep for ep in eps if group in (None, ep.group)]
    return fake


def test_builtin_planners_are_found():
    names = available_planners()
    assert {"default", "nnunet_v2"} <= set(names)
    assert all(desc for desc in names.values())
    default, baseline = get_planner("default"), get_planner("nnunet_v2")
    assert isinstance(default, DefaultPlanner) and default.name == "default"
    assert isinstance(baseline, NnUNetV2Planner) and baseline.name == "nnunet_v2"
    assert get_planner("default") is not default  # a new instance every time


def test_builtins_are_the_fallback_when_no_entry_point_is_installed(fresh_registry):
    fresh_registry.setattr(importlib.metadata, "entry_points", _entry_points())
    assert sorted(available_planners()) == ["default", "nnunet_v2"]
    assert isinstance(get_planner("nnunet_v2"), NnUNetV2Planner)


def test_entry_points_are_read_and_named_by_the_entry_point(fresh_registry):
    ep = importlib.metadata.EntryPoint("house_rules", "planners.default:DefaultPlanner", registry.ENTRY_POINT_GROUP)
    other = importlib.metadata.EntryPoint("elsewhere", "planners.default:DefaultPlanner", "another.group")
    fresh_registry.setattr(importlib.metadata, "entry_points", _entry_points(ep, other))
    # the entry point is added to the built-ins (always present); other groups are ignored
    assert sorted(available_planners()) == ["default", "house_rules", "nnunet_v2"]
    planner = get_planner("house_rules")
    assert isinstance(planner, DefaultPlanner) and planner.name == "house_rules"


def test_entry_point_that_fails_to_import_names_itself(fresh_registry):
    broken = importlib.metadata.EntryPoint("broken", "no_such_module_xyz:Planner", registry.ENTRY_POINT_GROUP)
    not_a_planner = importlib.metadata.EntryPoint("notplanner", "math:pi", registry.ENTRY_POINT_GROUP)
    fresh_registry.setattr(importlib.metadata, "entry_points", _entry_points(broken, not_a_planner))
    with pytest.raises(AutosegError) as err:
        get_planner("broken")
    assert "'broken'" in str(err.value) and "no_such_module_xyz" in str(err.value)
    with pytest.raises(AutosegError, match="not a subclass"):
        get_planner("notplanner")
    listing = available_planners()  # listing still works and shows the problem
    assert listing["broken"].startswith("UNAVAILABLE")


def test_register_planner_decorator(fresh_registry):
    @register_planner("tiny")
    class TinyPlanner(DefaultPlanner):
        description = "the default planner with a lower oversampling fraction"
        foreground_oversample_fraction = 0.1

    planner = get_planner("tiny")
    assert isinstance(planner, TinyPlanner) and planner.name == "tiny"
    assert available_planners()["tiny"] == TinyPlanner.description
    assert "default" in available_planners()  # registering adds, it does not hide the others
    with pytest.raises(TypeError):
        register_planner("bad")(object)


def test_unknown_name_suggests_the_closest(fresh_registry):
    with pytest.raises(UnknownNameError) as err:
        get_planner("defualt")
    msg = str(err.value)
    assert "did you mean 'default'" in msg and "nnunet_v2" in msg and "--list-planners" in msg
    with pytest.raises(UnknownNameError, match="nnunet_v2"):
        get_planner("nnunet")


def test_a_planner_must_implement_sizing():
    class NoSizing(Planner):
        name = "nosizing"

    with pytest.raises(TypeError):
        NoSizing()
