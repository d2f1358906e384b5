"""Lazy optional imports (``_optional.require``): the module, or one line naming what to install."""

from __future__ import annotations

import importlib

import pytest

from flair_deploy._optional import require
from flair_deploy.errors import FlairDeployError, MissingDependencyError


def test_an_importable_module_is_returned():
    assert require("json", purpose="reading reports") is importlib.import_module("json")


def test_a_missing_module_is_one_line_naming_the_purpose_and_the_install():
    with pytest.raises(MissingDependencyError) as exc:
        require("flair_deploy_no_such_module.sub", purpose="testing the error")
    msg = str(exc.value)
    assert "\n" not in msg
    assert "testing the error" in msg and "pip install flair_deploy_no_such_module" in msg
    assert isinstance(exc.value, FlairDeployError)  # the CLI prints it as one line, exit 1


def test_a_known_heavy_dependency_names_its_extra(monkeypatch):
    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(MissingDependencyError, match=r"flair-deploy\[tensorrt\]") as exc:
        require("tensorrt", purpose="building TensorRT engines")
    assert "building TensorRT engines" in str(exc.value)
