"""Each package's public names, checked the way httpx checks its own (``tests/test_exported_members.py``).

For every package: ``__all__`` is sorted (ruff's RUF022 order: CONSTANTS, then Classes, then the rest,
each in natural order) and has no duplicates, every name in it exists, and every public name the
package's ``__init__`` defines (``def``, ``class``, assignment) or re-exports from its own submodules
is listed in it. A name users can import but ``__all__`` omits is an API nobody decided on.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

PACKAGES = (
    "flair_deploy",
    "flair_deploy.training",
    "flair_deploy.exports",
    "flair_deploy.inference",
    "flair_deploy.inference.backends",
    "flair_deploy.benchmarking",
)


# Known gaps, reported to the owners: strict, so the fix turns the xfail into a failure to remove it.
_KNOWN_GAPS: dict[str, str] = {}


def _known_gap(package: str) -> object:
    reason = _KNOWN_GAPS.get(package)
    return pytest.param(package, marks=pytest.mark.xfail(strict=True, reason=reason)) if reason else package


def ruf022_key(name: str) -> tuple[int, list[int | str]]:
    """Ruff's isort-style ``__all__`` order: SCREAMING_CASE, CamelCase, others; natural within each."""
    if len(name) > 1 and name.isupper():
        kind = 0
    elif name[:1].isupper():
        kind = 1
    else:
        kind = 2
    natural = [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
    return kind, natural


def defined_in_init(package: str) -> set[str]:
    """Public names bound at the top level of the package's ``__init__`` (not third-party imports)."""
    mod = importlib.import_module(package)
    tree = ast.parse(Path(mod.__file__).read_text(encoding="utf-8"))
    # The root package owns every flair_deploy module; a subpackage owns its own submodules.
    own = "flair_deploy." if package == "flair_deploy" else package + "."
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(own):
            names.update(a.asname or a.name for a in node.names)  # a re-export from its own modules
    return {n for n in names if not n.startswith("_") and n != "annotations"}


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_sorted_without_duplicates(package):
    names = list(importlib.import_module(package).__all__)
    assert names == sorted(names, key=ruf022_key)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_in_all_exists(package):
    mod = importlib.import_module(package)
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing, f"{package}.__all__ names what the package does not have: {missing}"


@pytest.mark.parametrize("package", [_known_gap(p) for p in PACKAGES])
def test_every_public_name_defined_in_init_is_in_all(package):
    mod = importlib.import_module(package)
    unlisted = sorted(defined_in_init(package) - set(mod.__all__))
    assert not unlisted, f"{package} defines public names missing from __all__: {unlisted}"


def test_version_is_exported_and_matches_the_distribution():
    from importlib.metadata import PackageNotFoundError, version

    import flair_deploy

    assert "__version__" in flair_deploy.__all__
    try:
        installed = version("flair-deploy")
    except PackageNotFoundError:  # running from a source tree that was never installed
        pytest.skip("flair-deploy is not installed")
    assert flair_deploy.__version__ == installed
