"""Compatibility shims, applied once before SMP/timm import torchvision.

Some environments pair a CPU-only torch with a torchvision wheel built for CUDA (or for another torch).
Its compiled operators cannot load, and ``import torchvision`` then fails with
``operator torchvision::nms does not exist`` while registering fake kernels for them. SMP and timm use
only torchvision's pure-Python parts, so declaring the two operator schemas makes the import succeed.

We first try to load torchvision's own compiled library; the schemas are declared only when that fails,
so a working torchvision is never touched.

The shim is per process and must run before anything imports torchvision (Lightning does, through
torchmetrics). :mod:`flair_deploy.training` and :mod:`flair_deploy.training.data` apply it on import
and :func:`flair_deploy.models.build_model` before SMP; so every process that imports our training
code first has it: ranks that Lightning re-launches (they re-run the command), forked DataLoader
workers (they inherit it), and ``ddp_spawn`` workers, which unpickle a launcher class of
:mod:`flair_deploy.training.run` before anything of Lightning. A program that imports Lightning
*before* flair-deploy must call :func:`ensure_torchvision_importable` itself first.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

__all__ = ["ensure_torchvision_importable"]

_KEEP: list[object] = []  # torch.library.Library objects must stay alive for their schemas to persist


@functools.cache
def ensure_torchvision_importable() -> None:
    """Declare ``torchvision::nms`` and ``torchvision::qnms`` if torchvision's compiled ops cannot load."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return  # not installed: the importer reports that itself
    if _ops_present(torch):
        return
    for lib_path in sorted(Path(next(iter(spec.submodule_search_locations))).glob("_C*.so")):
        try:
            torch.ops.load_library(str(lib_path))  # type: ignore[no-untyped-call]
        except (OSError, RuntimeError):
            continue
        if _ops_present(torch):
            return
    lib = torch.library.Library("torchvision", "DEF")  # type: ignore[no-untyped-call]
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")  # type: ignore[no-untyped-call]
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")  # type: ignore[no-untyped-call]
    _KEEP.append(lib)


def _ops_present(torch: object) -> bool:
    try:
        torch.ops.torchvision.nms  # type: ignore[attr-defined]  # noqa: B018  (the access is the probe)
    except (AttributeError, RuntimeError):
        return False
    return True
