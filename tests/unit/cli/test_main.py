import subprocess
import sys

import pytest

from flair_deploy.cli import main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    for cmd in ("train", "evaluate", "export", "inspect", "detect", "benchmark", "demo"):
        assert cmd in out


def test_python_dash_m_runs_the_cli():
    res = subprocess.run(
        [sys.executable, "-m", "flair_deploy", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0
    assert "Usage" in res.stdout and "detect" in res.stdout


def test_unknown_command_exits_non_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code != 0
