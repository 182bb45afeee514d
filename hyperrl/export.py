"""Export of one generated policy as a file usable without hyperrl: TorchScript or ONNX.

Both take the policy's standalone module (:meth:`hyperrl.policy.GeneratedPolicy.to_module`:
the generated MLP with its weights baked in and a deterministic action head) and write it
atomically (:func:`hyperrl.fileio.atomic_write_path`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from hyperrl.errors import HyperrlError
from hyperrl.fileio import atomic_write_path

if TYPE_CHECKING:
    from hyperrl.policy import GeneratedPolicy

__all__ = ["export_onnx", "export_torchscript"]


def export_torchscript(policy: "GeneratedPolicy", path: str | os.PathLike) -> Path:
    """Save a TorchScript module (``torch.jit.load(path)`` needs only torch): obs ``[B, D]``
    or ``[D]`` float -> action. Written atomically; returns the path."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in newer torch
        scripted = torch.jit.script(policy.to_module())
        return atomic_write_path(Path(path), lambda tmp: torch.jit.save(scripted, str(tmp)))


def export_onnx(policy: "GeneratedPolicy", path: str | os.PathLike, opset_version: int | None = None) -> Path:
    """Save an ONNX model: input ``obs`` float32 ``[batch, D]`` -> output ``action``
    (int64 ``[batch]`` or float32 ``[batch, A]``). Needs the ``onnx`` package (and
    ``onnxscript`` for torch's current exporter; without it the legacy exporter is used).
    """
    if not _importable("onnx"):
        raise HyperrlError("ONNX export needs the 'onnx' package, which is not installed "
                           "(pip install onnx onnxscript)")
    module = policy.to_module().to(device="cpu", dtype=torch.float32)
    example = torch.zeros(2, policy.obs_dim, dtype=torch.float32)
    names = dict(input_names=["obs"], output_names=["action"])
    has_dynamo_flag = "dynamo" in inspect.signature(torch.onnx.export).parameters

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if has_dynamo_flag and _importable("onnxscript"):
                batch = torch.export.Dim("batch")
                torch.onnx.export(module, (example,), str(tmp), dynamo=True, verbose=False,
                                  dynamic_shapes={"obs": {0: batch}}, opset_version=opset_version,
                                  external_data=False, **names)
            else:
                extra = {"dynamo": False} if has_dynamo_flag else {}
                torch.onnx.export(module, (example,), str(tmp), opset_version=opset_version,
                                  dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}},
                                  **names, **extra)

    with contextlib.redirect_stdout(_Null()):  # torch's exporter reports progress on stdout
        return atomic_write_path(Path(path), write)


class _Null:
    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
