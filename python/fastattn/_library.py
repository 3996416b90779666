"""Loads the compiled kernels, or says exactly why they cannot be loaded."""

from __future__ import annotations

import importlib.util

import torch

_REBUILD = (
    "Rebuild fastattn against the torch you run, from the fastattn source folder:\n"
    "    pip install --no-build-isolation --force-reinstall --no-deps .\n"
    "(--no-build-isolation makes the build use this torch instead of a fresh download.)"
)


def _torch_release(version: str) -> tuple[str, str]:
    """('2.13', 'cpu') from '2.13.0+cpu': the parts a compiled extension depends on."""
    release, _, local = version.partition("+")
    major_minor = ".".join(release.split(".")[:2])
    return major_minor, local


def load() -> None:
    spec = importlib.util.find_spec("fastattn._C")
    try:
        from fastattn import _build_info
    except ImportError:
        _build_info = None
    if spec is None or spec.origin is None or _build_info is None:
        raise ImportError(
            "fastattn's compiled library (fastattn/_C.so) is missing: fastattn was imported "
            "from a source tree that was never built, or the build failed.\n" + _REBUILD
        )
    built, running = _build_info.TORCH_VERSION, torch.__version__
    if _torch_release(built) != _torch_release(running):
        raise ImportError(
            f"fastattn was built for torch {built}, but torch {running} is running; a compiled "
            f"library only loads under the torch it was built for.\n" + _REBUILD
        )
    try:
        torch.ops.load_library(spec.origin)
    except OSError as error:
        raise ImportError(
            f"fastattn's compiled library {spec.origin} (built for torch {built}) failed to "
            f"load under torch {running}: {error}\n" + _REBUILD
        ) from error
