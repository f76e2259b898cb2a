"""Where a :class:`~autoseg.inference.predictor.Predictor` gets its model from: a work folder (``--workdir
RUN``) or an exported model zip (``--model model.zip``, :mod:`autoseg.model.model_zip_reader`).

Both give the same things: the plans, the selection (winner, folds, postprocessing), the dataset's file
ending and files per case, the folds there are, each network's weights with the precision it was trained
in, and (zip exported with ``--onnx``) its ONNX file. Prediction from either is the same code, so a model
zip predicts byte for byte what its work folder predicts.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import AutosegError
from ..schemas import ConfigurationPlan, Plans, Selection
from ..store import RunStore, file_hash
from ..workdir import CHECKPOINT_KINDS

log = logging.getLogger(__name__)

Describe = Callable[[str, "int | str"], str]  # (configuration, fold) -> words for a message


class ModelSource(ABC):
    """The model a Predictor loads (module doc)."""

    plans: Plans

    @property
    @abstractmethod
    def file_ending(self) -> str:
        """The dataset's image file ending (a folder of cases is read in it)."""

    @property
    @abstractmethod
    def files_per_case(self) -> int:
        """Image files per case: 1, or one per channel."""

    @abstractmethod
    def resolve_checkpoint(self, requested: str | None) -> str:
        """The checkpoint kind to use (final, best, latest) for ``requested`` (None: the default)."""

    @abstractmethod
    def selection(self, *, optional: bool) -> Selection | None:
        """The selection for these plans; ``optional`` (configurations named): None instead of an error."""

    @abstractmethod
    def default_folds(self) -> list[str]:
        """The folds used when neither the selection nor the caller names them."""

    @abstractmethod
    def image_ndim(self) -> int:
        """2 when the networks were trained on 2D images, else 3."""

    @abstractmethod
    def check_networks(self, stages: Sequence[str], folds: Sequence[int | str], checkpoint: str,
                       describe: Describe) -> None:
        """AutosegError before any loading when a (configuration, fold) needed is not there or unusable."""

    @abstractmethod
    def load_weights(self, config: ConfigurationPlan, fold: int | str, checkpoint: str,
                     network: torch.nn.Module) -> str | None:
        """Load the weights of (config, fold) into ``network``; return the precision it was trained in."""

    def onnx(self, configuration: str, fold: int | str) -> bytes | None:
        """The network as exported ONNX, or None (then it is exported from the torch weights when needed)."""
        return None

    @abstractmethod
    def record(self, selection_used: bool) -> dict[str, Any]:
        """What prediction_info.json records of the model (workdir, model, model_id, selection_hash)."""


class WorkdirSource(ModelSource):
    """A work folder: plans.json, results/selection.json, the folds' checkpoints and train_settings.json."""

    def __init__(self, workdir: str | Path):
        self.store = RunStore(workdir)
        self.wd = self.store.wd
        self.plans = self.store.plans()
        self._manifest = None

    def __repr__(self) -> str:
        return f"WorkdirSource({str(self.wd.root)!r})"

    def _dataset(self):
        if self._manifest is None:
            self._manifest = self.store.manifest()
        return self._manifest

    @property
    def file_ending(self) -> str:
        return self._dataset().file_ending

    @property
    def files_per_case(self) -> int:
        cases = self._dataset().cases
        return len(cases[0].images) if cases else 1

    def resolve_checkpoint(self, requested: str | None) -> str:
        checkpoint = "final" if requested is None else requested
        if checkpoint not in CHECKPOINT_KINDS:
            raise AutosegError(f"checkpoint '{checkpoint}' is unknown; expected one of {', '.join(CHECKPOINT_KINDS)}")
        return checkpoint

    def selection(self, *, optional: bool) -> Selection | None:
        return self.store.selection_for(self.plans, optional=optional)

    def default_folds(self) -> list[str]:
        if self.wd.splits_json.exists():
            return [str(k) for k in range(len(self.store.splits().folds))]
        return [str(k) for k in range(5)]

    def image_ndim(self) -> int:
        from .checks import trained_image_ndim

        return trained_image_ndim(self.plans, self.store)

    def check_networks(self, stages: Sequence[str], folds: Sequence[int | str], checkpoint: str,
                       describe: Describe) -> None:
        missing = [(c, f) for c in stages for f in folds if not self.wd.checkpoint(c, f, checkpoint).is_file()]
        if missing:
            shown = 6
            cmds = "\n".join(f"  autoseg train --workdir {self.wd.root} -c {c} --fold {f}" for c, f in missing[:shown])
            if len(missing) > shown:
                cmds += (f"\n  ... and {len(missing) - shown} more (or `autoseg train --workdir {self.wd.root} "
                         f"--fold K` for every configuration of fold K)")
            raise AutosegError(f"{len(missing)} of the {len(stages) * len(folds)} trained "
                               f"networks needed are missing (checkpoint_{checkpoint}.pt of "
                               f"{', '.join(describe(c, f) for c, f in missing)}); run:\n{cmds}\n"
                               f"{self._with_what_exists(stages, folds, missing)}")
        self.store.refuse_stale_folds(self.plans, [(c, f) for c in stages for f in folds], purpose="to predict",
                                      alternative="or predict with other folds (--folds) or configurations (-c)")

    def _with_what_exists(self, stages: Sequence[str], folds: Sequence[int | str],
                          missing: Sequence[tuple[str, int | str]]) -> str:
        """The flags that predict with the trained networks there are (all but ``missing``), when some are."""
        trained = {c: [str(f) for f in folds if (c, f) not in missing] for c in stages}
        common = [f for f in map(str, folds) if all(f in trained[c] for c in stages)]
        if common:
            return f"or predict with the folds that exist: add `--folds {' '.join(common)}`"
        alone = [c for c in stages if trained[c] and not self.plans.configuration(c).previous_stage]
        if alone:
            c = alone[0]
            return f"or predict with what is trained: add `-c {c} --folds {' '.join(trained[c])}`"
        return "or predict with the folds that exist (--folds ...) once one is trained"

    def load_weights(self, config: ConfigurationPlan, fold: int | str, checkpoint: str,
                     network: torch.nn.Module) -> str | None:
        from ..model.checkpoint import CheckpointError, load_checkpoint
        from .checks import unusable_checkpoint

        path = self.wd.checkpoint(config.name, fold, checkpoint)
        try:  # verified: zip CRCs, keys, finite weights, this network's parameter names and shapes
            ckpt = load_checkpoint(path, map_location="cpu", network=network)
        except CheckpointError as e:
            raise AutosegError(unusable_checkpoint(e, config.name, fold, self.wd.root, checkpoint)) from None
        try:
            network.load_state_dict(ckpt["model"])
        except (RuntimeError, KeyError) as e:
            raise AutosegError(f"checkpoint {path} does not fit the '{config.name}' network in plans.json "
                               f"({str(e).splitlines()[0]}); the plans changed after training: retrain "
                               f"with `autoseg train --workdir {self.wd.root} -c {config.name} "
                               f"--fold {fold}`") from None
        return (ckpt.get("state") or {}).get("precision")

    def record(self, selection_used: bool) -> dict[str, Any]:
        return {"workdir": str(self.wd.root.resolve()), "model": None, "model_id": None,
                # the selection.json it followed (content hash), so a later run can tell whether it still holds
                "selection_hash": (file_hash(self.wd.selection_json) if selection_used
                                   and self.wd.selection_json.exists() else None)}


class ZipSource(ModelSource):
    """An exported model zip, checked and read into memory by :func:`~autoseg.model.model_zip_reader.open_model_zip`."""

    def __init__(self, path: str | Path):
        from ..model.model_zip_reader import open_model_zip

        self.zip = open_model_zip(path)
        self.plans = self.zip.plans

    def __repr__(self) -> str:
        return f"ZipSource({str(self.zip.path)!r})"

    @property
    def file_ending(self) -> str:
        return self.zip.dataset.file_ending

    @property
    def files_per_case(self) -> int:
        return self.zip.dataset.files_per_case

    def resolve_checkpoint(self, requested: str | None) -> str:
        held = self.zip.manifest.checkpoint
        if requested is not None and requested != held:
            raise AutosegError(f"model {self.zip.path} holds the '{held}' weights, not '{requested}'; leave "
                               f"--checkpoint out, or export again with `autoseg export --checkpoint {requested}`")
        return held

    def selection(self, *, optional: bool) -> Selection | None:
        return self.zip.selection

    def default_folds(self) -> list[str]:
        return list(self.zip.manifest.folds)

    def image_ndim(self) -> int:
        from ..preprocessing.resample import is_dummy_spacing

        if all(is_dummy_spacing(c.spacing_zyx_mm[0]) for c in self.plans.configurations.values()):
            return 2
        return 2 if self.zip.dataset.ndim == 2 else 3

    def check_networks(self, stages: Sequence[str], folds: Sequence[int | str], checkpoint: str,
                       describe: Describe) -> None:
        missing = [describe(c, f) for c in stages for f in folds if self.zip.network(c, f) is None]
        if missing:
            m = self.zip.manifest
            raise AutosegError(f"model {self.zip.path} holds no network for {', '.join(missing)}: it holds "
                               f"{', '.join(m.stages)} with folds {', '.join(m.folds)}; predict with those "
                               f"(-c / --folds), or export the model again from a work folder that has them")

    def load_weights(self, config: ConfigurationPlan, fold: int | str, checkpoint: str,
                     network: torch.nn.Module) -> str | None:
        network.load_state_dict(self.zip.weights(config.name, fold, network))
        held = self.zip.network(config.name, fold)
        return held.precision if held is not None else None

    def onnx(self, configuration: str, fold: int | str) -> bytes | None:
        return self.zip.onnx(configuration, fold)

    def record(self, selection_used: bool) -> dict[str, Any]:
        from ..model.model_zip import SELECTION_JSON

        return {"workdir": None, "model": str(self.zip.path.resolve()), "model_id": self.zip.model_id,
                "selection_hash": (self.zip.manifest.members[SELECTION_JSON].sha256[:16] if selection_used
                                   else None)}


def open_model_source(model: str | Path | ModelSource) -> ModelSource:
    """``model`` as a source: a ModelSource as it is, a file as a model zip, anything else as a work folder."""
    if isinstance(model, ModelSource):
        return model
    return ZipSource(model) if Path(model).is_file() else WorkdirSource(model)
