"""Planner registry: entry points of group ``autoseg.planners`` plus ``@register_planner`` for notebooks and tests.

Entry points are read once, lazily (on the first lookup), and a planner class is imported only
when it is asked for (or listed). The two built-ins, ``planners.default:DefaultPlanner`` and
``planners.nnunet_v2:NnUNetV2Planner``, are always registered (also in a plain checkout that is not
pip-installed); installed entry points are added to them.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Callable

from ..errors import AutosegError, unknown_name_error
from .base import Planner

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "autoseg.planners"
#: Always registered; installed entry points of :data:`ENTRY_POINT_GROUP` are added to them.
BUILTIN_PLANNERS = {"default": "planners.default:DefaultPlanner",
                    "nnunet_v2": "planners.nnunet_v2:NnUNetV2Planner"}
_LIST_HINT = "List them with `autoseg plan --list-planners`."

_registered: dict[str, type[Planner]] = {}  # from @register_planner
_discovered: dict[str, str] | None = None  # name -> "module:attr" from entry points (or the built-ins)
_loaded: dict[str, type[Planner]] = {}


def register_planner(name: str) -> Callable[[type[Planner]], type[Planner]]:
    """Class decorator: make ``cls`` available as ``get_planner(name)``. Re-registering a name replaces it."""

    def deco(cls: type[Planner]) -> type[Planner]:
        if not (isinstance(cls, type) and issubclass(cls, Planner)):
            raise TypeError(f"@register_planner({name!r}) needs a subclass of autoseg.planning.base.Planner, "
                            f"got {cls!r}")
        if name in _registered or name in _loaded:
            logger.info("planner '%s' is registered again; the new class replaces the old one", name)
        _registered[name] = cls
        _loaded.pop(name, None)
        return cls

    return deco


def _discover() -> dict[str, str]:
    global _discovered
    if _discovered is None:
        # the built-ins are always there (also in a plain checkout); installed entry points add to them
        found = dict(BUILTIN_PLANNERS)
        found.update({ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})
        _discovered = found
    return _discovered


def _import(name: str, target: str) -> type[Planner]:
    module_name, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
    except Exception as e:  # any failure inside a plugin becomes a clear, named error
        raise AutosegError(f"planner '{name}' (entry point '{name} = {target}' in group '{ENTRY_POINT_GROUP}') "
                           f"failed to import: {type(e).__name__}: {e}. Reinstall the package that provides it, or "
                           f"choose another planner. {_LIST_HINT}") from e
    if not (isinstance(obj, type) and issubclass(obj, Planner)):
        raise AutosegError(f"planner '{name}' (entry point '{name} = {target}') is {obj!r}, not a subclass of "
                           f"autoseg.planning.base.Planner; fix the entry point of the package that provides it")
    return obj


def _planner_class(name: str) -> type[Planner]:
    if name in _registered:
        return _registered[name]
    if name not in _loaded:
        _loaded[name] = _import(name, _discover()[name])
    return _loaded[name]


def _known_names() -> list[str]:
    return sorted(set(_registered) | set(_discover()))


def get_planner(name: str) -> Planner:
    """A new instance of the planner registered as ``name`` (its ``name`` attribute set to ``name``).

    Raises an UnknownNameError with "did you mean" for an unknown name, and an AutosegError naming
    the entry point when a planner fails to import.
    """
    known = _known_names()
    if name not in known:
        raise unknown_name_error("planner", name, known, hint=_LIST_HINT)
    planner = _planner_class(name)()
    if planner.name != name:
        planner.name = name  # the registered name is what plans.json records
    return planner


def available_planners() -> dict[str, str]:
    """Registered planner names -> one-line description, sorted by name.

    A planner whose entry point fails to import is listed with the error as its description
    (``get_planner`` on it raises the error).
    """
    out = {}
    for name in _known_names():
        try:
            out[name] = _planner_class(name).description or "(no description)"
        except AutosegError as e:
            out[name] = f"UNAVAILABLE: {e}"
    return out
