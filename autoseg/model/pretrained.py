"""Fine-tuning: start a training from the weights of another autoseg model (`autoseg train --pretrained`).

The source is a checkpoint file (``checkpoint_final.pt`` / ``checkpoint_best.pt`` of any autoseg run) or
a fold folder holding one; it is loaded and verified like every checkpoint (weights only, zip CRCs,
finite values). Its weights are copied into this plan's network parameter by parameter:

* every parameter must exist in both with the same shape, except the segmentation heads
  (``decoder.seg_layers.*``), which are re-initialised when the number of classes differs;
* anything else (another number of input channels, stages, features, kernels or strides) is refused,
  naming the first parameter and both shapes, because copying part of an encoder is not what the user
  asked for. A compatible plan has the same network topology and input channels.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import AutosegError
from .checkpoint import load_checkpoint

HEAD_PREFIX = "decoder.seg_layers."


@dataclass(frozen=True)
class PretrainedLoad:
    """What :func:`load_pretrained` did: the file, its content hash, the parameters copied and those
    re-initialised (the heads of a model with other classes)."""

    path: str
    checkpoint_hash: str
    copied: int
    reinitialised: list[str] = field(default_factory=list)

    def describe(self) -> str:
        heads = (f"; segmentation heads re-initialised for this dataset's classes ({len(self.reinitialised)} "
                 f"tensors)" if self.reinitialised else "")
        return f"started from the weights of {self.path}: {self.copied} tensors copied{heads}"


def resolve_pretrained(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a fold folder (its checkpoint_final.pt, else checkpoint_best.pt)."""
    p = Path(path)
    if p.is_dir():
        for name in ("checkpoint_final.pt", "checkpoint_best.pt"):
            if (p / name).is_file():
                return p / name
        raise AutosegError(f"--pretrained {p}: the folder holds no checkpoint_final.pt or checkpoint_best.pt; give a "
                           f"fold folder of a finished training (RUN/results/CONFIG/fold_K) or a checkpoint file")
    if not p.is_file():
        raise AutosegError(f"--pretrained {p} does not exist; give a checkpoint file or a fold folder of another run")
    return p


def load_pretrained(path: str | os.PathLike, network: torch.nn.Module, *, what: str = "this plan") -> PretrainedLoad:
    """Copy the weights at ``path`` into ``network`` (see the module doc); AutosegError when they do not fit."""
    from ..store import file_hash

    source = resolve_pretrained(path)
    saved = load_checkpoint(source, map_location="cpu")["model"]
    target = network.state_dict()
    missing = [k for k in target if k not in saved and not k.startswith(HEAD_PREFIX)]
    extra = [k for k in saved if k not in target and not k.startswith(HEAD_PREFIX)]
    reshaped = [k for k in target if k in saved and tuple(saved[k].shape) != tuple(target[k].shape)
                and not k.startswith(HEAD_PREFIX)]
    if missing or extra or reshaped:
        if reshaped:
            k = reshaped[0]
            detail = (f"{k} has shape {list(saved[k].shape)} in {source} but {list(target[k].shape)} in "
                      f"{what}" + (" (another number of input channels)" if k == _first_conv(target) else ""))
        else:
            k = (missing or extra)[0]
            detail = (f"{k} is {'missing from' if missing else 'not part of'} {'the pretrained model' if missing else what}"
                      f" ({len(missing)} parameter(s) missing, {len(extra)} extra: another number of stages or "
                      f"convolutions)")
        raise AutosegError(f"--pretrained {source} does not fit {what}: {detail}. Fine-tuning needs the same network "
                           f"topology and input channels: plan this dataset with the model's plans "
                           f"(`autoseg plan DATASET --workdir NEW_RUN --plans-from THE_MODEL'S_RUN`), or train "
                           f"from scratch")
    heads = [k for k in target if k.startswith(HEAD_PREFIX)]
    head_fits = all(k in saved and tuple(saved[k].shape) == tuple(target[k].shape) for k in heads)
    copy = {k: v for k, v in saved.items() if k in target and (head_fits or not k.startswith(HEAD_PREFIX))}
    network.load_state_dict({**target, **{k: v.to(target[k].dtype) for k, v in copy.items()}})
    return PretrainedLoad(str(source), file_hash(source), len(copy), [] if head_fits else heads)


def _first_conv(state: dict[str, torch.Tensor]) -> str | None:
    """The first 5D/4D weight (the input convolution): the one an input-channel mismatch shows up in."""
    return next((k for k, v in state.items() if k.endswith("weight") and v.dim() >= 4), None)
