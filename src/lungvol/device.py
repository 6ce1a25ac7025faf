"""Choosing the compute device for commands that can use a GPU (``--device auto|cpu|cuda``).

The classical pipeline runs on the CPU; learned backends (``lungvol[dl]``) run on CUDA when
asked. torch is optional and imported lazily, only when the request needs it, so ``cpu`` never
pays torch's import time and a machine without torch still runs everything on the CPU.

The resolved device is what callers record in provenance (``run.json``); ``describe_device``
gives the extra facts worth recording (torch and CUDA versions, the GPU's name).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
from types import ModuleType
from typing import Any

from lungvol.errors import InputError, MissingDependencyError

logger = logging.getLogger(__name__)

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")
CPU = "cpu"
CUDA = "cuda"


def _import_torch() -> ModuleType | None:
    """Import torch if it is installed; ``None`` when it is not.

    A torch that is installed but fails to import (broken CUDA libraries, ABI mismatch) is
    an environment problem worth a clear error rather than a silent fall back to the CPU.
    """
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        return importlib.import_module("torch")
    except (ImportError, OSError) as err:
        raise MissingDependencyError(
            f"torch is installed but cannot be imported ({err.__class__.__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); reinstall torch or use --device cpu"
        ) from err


def _cuda_device_count(torch: ModuleType) -> int:
    try:
        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except RuntimeError as err:  # e.g. driver too old for this torch build
        logger.warning("torch cannot query CUDA (%s); treating the machine as CPU-only", err)
        return 0


def resolve_device(requested: str) -> str:
    """Turn a ``--device`` request into the device that will be used.

    Parameters
    ----------
    requested : str
        ``"auto"`` (CUDA when torch is installed and sees a GPU, else CPU), ``"cpu"`` or
        ``"cuda"``. Case and surrounding spaces are ignored.

    Returns
    -------
    str
        ``"cpu"`` or ``"cuda"``.

    Raises
    ------
    InputError
        ``requested`` is not one of auto/cpu/cuda, or ``cuda`` was requested on a machine
        where torch sees no CUDA GPU.
    MissingDependencyError
        ``cuda`` was requested but torch is not installed (or cannot be imported).

    Examples
    --------
    >>> resolve_device("CPU")
    'cpu'
    """
    if not isinstance(requested, str):
        raise InputError(f"device must be one of {'|'.join(DEVICE_CHOICES)}, got {requested!r}")
    choice = requested.strip().lower()
    if choice not in DEVICE_CHOICES:
        raise InputError(
            f"unknown device {requested!r}; use one of {'|'.join(DEVICE_CHOICES)} "
            "(auto picks cuda when a GPU is visible to torch)"
        )
    if choice == CPU:
        return CPU

    torch = _import_torch()
    if choice == "auto":
        device = CUDA if torch is not None and _cuda_device_count(torch) > 0 else CPU
        logger.info(
            "device auto -> %s (%s)",
            device,
            "torch not installed" if torch is None else f"torch {torch.__version__}",
        )
        return device

    # choice == "cuda"
    if torch is None:
        raise MissingDependencyError(
            "--device cuda needs PyTorch, which is not installed; install a CUDA build of torch "
            "and 'pip install lungvol[dl]' (or use the CUDA image), or run with --device cpu"
        )
    if _cuda_device_count(torch) == 0:
        built_for = getattr(torch.version, "cuda", None)
        reason = (
            f"torch {torch.__version__} is a CPU-only build"
            if built_for is None
            else f"torch {torch.__version__} (CUDA {built_for}) sees no GPU"
        )
        raise InputError(
            f"--device cuda requested but {reason}; check the NVIDIA driver and, in a "
            "container, 'docker run --gpus all', or run with --device cpu"
        )
    return CUDA


def describe_device(device: str) -> dict[str, Any]:
    """Facts about a resolved device for provenance (no host or user identifiers).

    Parameters
    ----------
    device : str
        A value returned by :func:`resolve_device`.

    Returns
    -------
    dict
        ``{"device": ..., "torch_version": str | None, "cuda_version": str | None,
        "gpu_name": str | None}``.
    """
    if device not in (CPU, CUDA):
        raise InputError(f"describe_device expects 'cpu' or 'cuda', got {device!r}")
    info: dict[str, Any] = {
        "device": device,
        "torch_version": _installed_version("torch"),
        "cuda_version": None,
        "gpu_name": None,
    }
    if device == CUDA:
        torch = _import_torch()
        if torch is not None:
            info["cuda_version"] = getattr(torch.version, "cuda", None)
            if _cuda_device_count(torch) > 0:
                info["gpu_name"] = str(torch.cuda.get_device_name(0))
    return info


def _installed_version(distribution: str) -> str | None:
    """Version of an installed distribution without importing it (torch takes seconds)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
