"""Networks as ONNX: exporting a trained U-Net (``autoseg export --onnx``) and running it with ONNX
Runtime as a tile network of the sliding window (``autoseg predict --backend onnxruntime``).

The ONNX graph maps ``tiles`` (B, C, *spatial) float32 to ``logits`` (B, K, *spatial) float32: the
batch and every spatial axis are dynamic (the plain-conv U-Net exports so with the TorchScript
exporter; any spatial size divisible by the network's total stride per axis works, and the sliding
window always feeds patch-size tiles). Pre- and postprocessing are not in the graph: plans.json and
the model manifest describe them, and autoseg runs the same code for both backends.

:class:`OnnxTileNetwork` is a callable on a batch of tiles, which is all
:func:`~autoseg.model.sliding_window.predict_sliding_window` asks of a network, so tiling, Gaussian
weighting and mirroring are the torch backend's own code.
"""
from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import torch

from ..errors import AutosegError
from ..schemas import ConfigurationPlan
from .model_zip import ONNX_INPUT, ONNX_OUTPUT

log = logging.getLogger(__name__)

ONNX_OPSET = 17
BACKENDS = ("auto", "torch", "onnxruntime")


def onnx_backend_available() -> bool:
    """onnx (to export a network) and onnxruntime (to run it) can be imported (``pip install 'autoseg[export]'``)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def _missing(package: str, extra: str = "export") -> AutosegError:
    return AutosegError(f"the ONNX backend needs the Python package '{package}', which is not installed; "
                        f"install it with `pip install 'autoseg[{extra}]'` (or `pip install {package}`)")


def export_onnx(network: torch.nn.Module, config: ConfigurationPlan, *, opset: int = ONNX_OPSET) -> bytes:
    """``network`` (deep supervision off, eval mode, on the CPU) as ONNX bytes with dynamic batch and
    spatial axes, traced on one patch-size tile of ``config``."""
    try:
        import onnx  # noqa: F401 - torch.onnx needs it
    except ImportError:
        raise _missing("onnx") from None
    if hasattr(network, "set_deep_supervision"):
        network.set_deep_supervision(False)
    network = network.eval().to("cpu")
    example = torch.zeros((1, config.network.in_channels, *config.patch_size), dtype=torch.float32)
    spatial = {axis + 2: f"spatial_{axis}" for axis in range(len(config.patch_size))}
    axes = {ONNX_INPUT: {0: "batch", **spatial}, ONNX_OUTPUT: {0: "batch", **spatial}}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is deprecated in favour of torch.export's, which needs onnxscript, takes
        # ~10 s per network and narrows the spatial axes; this one exports the U-Net fully dynamic in < 1 s
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(network, (example,), buffer, input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                              opset_version=opset, dynamic_axes=axes, do_constant_folding=True, dynamo=False)
        except TypeError:  # a torch without the dynamo switch (older) or without the TorchScript exporter
            torch.onnx.export(network, (example,), buffer, input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                              opset_version=opset, dynamic_axes=axes, do_constant_folding=True)
    return buffer.getvalue()


class OnnxTileNetwork:
    """An ONNX network in an ONNX Runtime session, called like a torch network on a batch of tiles.

    ``threads``: intra-op threads (the CPU cores this process may use); ``providers``: ONNX Runtime
    execution providers, CPUExecutionProvider by default."""

    def __init__(self, model: bytes, *, threads: int, name: str = "network",
                 providers: tuple[str, ...] = ("CPUExecutionProvider",)):
        try:
            import onnxruntime as ort
        except ImportError:
            raise _missing("onnxruntime") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: a warning per unused initializer is noise
        # idle threads sleep instead of spinning, as autoseg asks of torch's OpenMP threads (OMP_WAIT_POLICY=PASSIVE,
        # cli.share_the_cpu_politely): spinning threads of two processes on few cores slow both down many times
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(model, sess_options=options, providers=list(providers))
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise AutosegError(f"ONNX Runtime cannot load {name} ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}); export the model again with "
                               f"`autoseg export --onnx`, or predict with --backend torch") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise AutosegError(f"{name} has {len(inputs)} inputs; an autoseg ONNX network has one ({ONNX_INPUT})")
        self.input_name = inputs[0].name
        self.name = name

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        """(B, C, *patch) float32 on the CPU -> (B, K, *patch) float32 logits."""
        array = np.ascontiguousarray(tiles.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])
