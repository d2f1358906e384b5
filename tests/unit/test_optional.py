from __future__ import annotations

import sys

import pytest

from flair_deploy._optional import install_hint, require, require_extra
from flair_deploy.errors import MissingDependencyError


def test_require_names_the_extra_that_provides_the_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)  # what a missing package looks like
    with pytest.raises(MissingDependencyError) as info:
        require("lightning", purpose="training")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("training needs lightning")
    assert message.endswith("pip install 'flair-deploy[train]'")


def test_require_returns_the_module():
    assert require("json", purpose="tests").dumps([]) == "[]"


@pytest.mark.parametrize(
    ("module", "extra", "hint"),
    [
        ("onnxslim", None, "pip install 'flair-deploy[export]'"),
        ("segmentation_models_pytorch.encoders", None, "pip install 'flair-deploy[train]'"),
        ("tensorrt", None, "pip install 'flair-deploy[tensorrt]' (needs an NVIDIA GPU and driver)"),
        ("torch", "gpu", "pip install 'flair-deploy[gpu]'"),
        ("somethingelse", None, "pip install somethingelse"),
    ],
)
def test_install_hint(module, extra, hint):
    assert install_hint(module, extra=extra) == hint


def test_require_extra_lists_what_is_missing_without_importing(monkeypatch):
    for name in ("onnx", "onnxscript"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(
        MissingDependencyError, match=r"^export needs onnx, onnxscript, which the base"
    ) as info:
        require_extra("export", purpose="export")
    assert str(info.value).endswith("pip install 'flair-deploy[export]'")
    require_extra("train", purpose="training")  # all installed here: no error
