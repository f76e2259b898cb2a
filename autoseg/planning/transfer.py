"""Plans transfer (`autoseg plan DATASET --plans-from OTHER_RUN`), as nnU-Net's plans transfer does.

The other run's configurations (target spacing, axis order, normalization, resampling, patch, batch and
network topology) are planned for this dataset unchanged, except what the dataset itself fixes: the
networks' output classes (this dataset's labels) and the cascade's input channels. A model of the other
run then fits this plan (`autoseg train --pretrained`), heads aside. Refused when the datasets differ in
dimensionality or in the number of image channels (normalization and the first convolution are per
channel).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import AutosegError
from ..schemas import Decision, Fingerprint, Plans, stable_hash


def transfer_plans(other: Plans, fp: Fingerprint, source: str | Path) -> Plans:
    """``other`` (the plans of another run, read from ``source``) made for the dataset of ``fp``."""
    channels = len(fp.channel_names)
    spec = fp.labels_spec
    foreground = len(spec.foreground_labels)
    classes = spec.num_outputs
    configs = {}
    for name, cfg in other.configurations.items():
        image_channels = len(cfg.normalization)
        if image_channels != channels:
            raise AutosegError(
                f"--plans-from {source}: its {name} plan normalizes {image_channels} image channel(s), this dataset "
                f"({fp.dataset_name}) has {channels} ({', '.join(fp.channel_names.values())}); plans can only be "
                f"transferred between datasets with the same channels")
        if (cfg.dims == 2) != (fp.ndim == 2) and name != "2d":
            raise AutosegError(f"--plans-from {source}: its {name} plan is for {'2D' if fp.ndim == 3 else '3D'} "
                               f"images, this dataset's are {fp.ndim}D; transfer plans between datasets of one "
                               f"dimensionality")
        in_channels = channels + (foreground if cfg.previous_stage else 0)
        network = replace(cfg.network, num_classes=classes, in_channels=in_channels)
        why = Decision("plans_from", str(source), "plans_transfer",
                       f"{name} copied from {source} (dataset {other.dataset_name}): spacing, axis order, "
                       f"normalization, patch {cfg.patch_size}, batch {cfg.batch_size} and network topology "
                       f"unchanged; outputs set to this dataset's {classes} classes (were "
                       f"{cfg.network.num_classes}), {in_channels} input channel(s).",
                       {"source_dataset": other.dataset_name, "source_classes": cfg.network.num_classes})
        configs[name] = replace(cfg, network=network, label_spec=spec, decisions=[*cfg.decisions, why])
    return replace(other, dataset_name=fp.dataset_name, fingerprint_hash=stable_hash(fp), configurations=configs,
                   planner=f"plans-from {Path(source).resolve()}",
                   decisions=[*other.decisions, Decision("plans_from", str(source), "plans_transfer",
                                                         f"every configuration copied from {source}.", {})],
                   warnings=list(other.warnings))
