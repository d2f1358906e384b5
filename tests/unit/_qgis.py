"""Run code under the system Python that has QGIS (Debian's python3-qgis), skipping where it is absent.

QGIS's Python bindings live in the system interpreter, not in the project's virtual environment, so
the tests that need QGIS run a small script there in a subprocess and read one JSON line back.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

QGIS_PYTHON = "/usr/bin/python3"


def require_qgis_python() -> None:
    """Skip the calling test, with the reason, where the system Python cannot import ``qgis.core``."""
    if not Path(QGIS_PYTHON).exists():
        pytest.skip(f"QGIS is not installed ({QGIS_PYTHON} is missing; apt-get install python3-qgis)")
    probe = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(
            f"QGIS is not installed ({QGIS_PYTHON} cannot import qgis.core; apt-get install python3-qgis)"
        )


def run_qgis_python(script: str | Path, *args: object, timeout: float = 120) -> Any:
    """Run *script* (code, or a script file) with the QGIS Python headless; return its last stdout line as JSON.

    Skips the test where QGIS is absent. The venv's ``PYTHONPATH`` is dropped: its packages are not
    QGIS's (a script that needs one adds its path itself, after the system's).
    """
    require_qgis_python()
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    env.pop("PYTHONPATH", None)
    argv = [str(script)] if isinstance(script, Path) else ["-c", script]
    done = subprocess.run(
        [QGIS_PYTHON, *argv, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
