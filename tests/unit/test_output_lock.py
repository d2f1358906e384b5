"""One job per output (atomic.OutputLock) and full disks reported as one line (atomic, benchmark reports)."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from flair_deploy import atomic
from flair_deploy.errors import OutputError

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _holder_process(out: Path, *, hold_s: float = 30.0) -> subprocess.Popen[str]:
    """Start a process that takes *out*'s lock, prints 'locked', and holds it for *hold_s*."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from flair_deploy.atomic import OutputLock
        with OutputLock(Path({str(out)!r}), command="flair-deploy detect --out x"):
            print("locked", flush=True)
            time.sleep({hold_s})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_records_its_holder_and_removes_its_file(tmp_path):
    out = tmp_path / "map.tif"
    with atomic.OutputLock(out, command="flair-deploy detect x.tif --out map.tif") as lock:
        assert lock.held and lock.lock_file == tmp_path / ".map.tif.lock"
        info = json.loads(lock.lock_file.read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert info["command"] == "flair-deploy detect x.tif --out map.tif" and info["since"]
        holder = atomic.lock_holder(out)
        assert holder is not None and holder.pid == os.getpid()
    assert not lock.held and atomic.lock_holder(out) is None
    assert list(tmp_path.iterdir()) == []


def test_a_second_holder_gets_one_line_naming_the_first(tmp_path):
    out = tmp_path / "map.tif"
    with atomic.OutputLock(out):
        with pytest.raises(OutputError) as exc, atomic.OutputLock(out):
            pass
        with pytest.raises(OutputError):
            atomic.check_unlocked(out)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{out} is being written by another flair-deploy job (pid {os.getpid()} on ")
    assert msg.endswith("; wait for it to finish or choose another --out")
    atomic.check_unlocked(out)  # released: free again
    with atomic.OutputLock(out):
        pass


def test_lock_excludes_another_process_and_is_freed_when_it_dies(tmp_path):
    out = tmp_path / "map.tif"
    proc = _holder_process(out)
    try:
        holder = atomic.lock_holder(out)
        assert (
            holder is not None and holder.pid == proc.pid and holder.command == "flair-deploy detect --out x"
        )
        with pytest.raises(OutputError, match=rf"pid {proc.pid} on .* since .*; wait for it"):
            atomic.OutputLock(out).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # Killed: its lock file is left, but nobody holds it; the next job takes it.
    assert (tmp_path / ".map.tif.lock").exists()
    assert atomic.lock_holder(out) is None
    with atomic.OutputLock(out) as lock:
        assert json.loads(lock.lock_file.read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".map.tif.lock").exists()


def test_a_leftover_unlocked_lock_file_is_taken(tmp_path):
    out = tmp_path / "map.tif"
    atomic.lock_path(out).write_text('{"pid": 1, "host": "elsewhere", "since": "yesterday", "command": ""}')
    with atomic.OutputLock(out) as lock:
        assert json.loads(lock.lock_file.read_text())["host"] == socket.gethostname()


def test_threads_race_for_one_lock_and_exactly_one_wins(tmp_path):
    out = tmp_path / "map.tif"
    barrier = threading.Barrier(4)
    won, refused = [], []
    hold = threading.Event()

    def job():
        barrier.wait()
        try:
            with atomic.OutputLock(out):
                won.append(1)
                hold.wait(5)
        except OutputError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=job) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(won) + len(refused) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    hold.set()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 3
    assert all("being written by another flair-deploy job" in m for m in refused)


def test_locked_outputs_keep_their_temporaries(tmp_path):
    out = tmp_path / "map.tif"
    # A temporary named after a pid that does not run here: a job on another node, or a dead one.
    foreign = tmp_path / ".map.tif.999999999.part"
    foreign.write_text("half a map")
    proc = _holder_process(out)
    try:
        assert atomic.remove_stale_temporaries(out) == []
        assert foreign.exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert atomic.remove_stale_temporaries(out) == [foreign]  # its writer is gone: a leftover


def test_lock_makes_missing_folders_and_removes_them_when_left_empty(tmp_path):
    out = tmp_path / "a" / "b" / "map.tif"
    with atomic.OutputLock(out):
        assert out.parent.is_dir()
    assert list(tmp_path.iterdir()) == []
    with atomic.OutputLock(out):
        out.write_text("map")
    assert out.read_text() == "map" and sorted(p.name for p in out.parent.iterdir()) == ["map.tif"]


def test_a_full_disk_while_recording_the_holder_is_one_line(tmp_path, monkeypatch):
    out = tmp_path / "map.tif"

    def full(*_args):
        raise ENOSPC

    monkeypatch.setattr(atomic.os, "pwrite", full)
    with pytest.raises(OutputError, match=r"No space left on device; free some space") as exc:
        atomic.OutputLock(out).acquire()
    assert "\n" not in str(exc.value)
    assert atomic.lock_holder(out) is None and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- full disks
def test_a_full_disk_inside_an_output_set_is_one_line_naming_the_output(tmp_path):
    final = tmp_path / "model.fp32.onnx"
    with pytest.raises(OutputError) as exc, atomic.OutputSet() as outputs:
        tmp = outputs.path(final)
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    assert str(exc.value) == (
        f"cannot write {final}: No space left on device; free some space or choose another output folder"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_a_scratch_file_of_an_output_set_names_its_output(tmp_path):
    final = tmp_path / "model.int8.onnx"
    with (
        pytest.raises(OutputError, match=rf"^cannot write {final}: No space left on device"),
        atomic.OutputSet() as outputs,
    ):
        outputs.path(final)
        with atomic.scratch_path(final, "pre") as scratch:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(scratch))
    assert list(tmp_path.iterdir()) == []


def test_other_errors_inside_an_output_set_keep_their_type(tmp_path):
    with pytest.raises(FileNotFoundError), atomic.OutputSet() as outputs:
        outputs.path(tmp_path / "a.json")
        raise FileNotFoundError(errno.ENOENT, "no such input", "calib.tif")


def test_a_full_disk_while_writing_a_benchmark_report_is_one_line(tmp_path, monkeypatch):
    from flair_deploy.benchmarking.fingerprint import collect_fingerprint
    from flair_deploy.benchmarking.report import BenchmarkReport, write_json, write_markdown

    report = BenchmarkReport(fingerprint=collect_fingerprint("cpu"), ceilings=[], settings={}, rows=[])

    def full(self, *_args, **_kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", full)
    for writer, name in ((write_json, "bench.json"), (write_markdown, "bench.md")):
        with pytest.raises(OutputError) as exc:
            writer(report, tmp_path / name)
        assert str(exc.value).startswith(f"cannot write {tmp_path / name}: No space left on device; free")
        assert "\n" not in str(exc.value)
    assert list(tmp_path.iterdir()) == []
