import errno
import os

import pytest

from flair_deploy import atomic
from flair_deploy.errors import OutputError


def test_atomic_path_appears_only_when_complete(tmp_path):
    out = tmp_path / "sub" / "map.tif"
    with atomic.atomic_path(out) as tmp:
        tmp.write_text("x")
        assert not out.exists() and tmp.name == f".map.tif.{os.getpid()}.part"
    assert out.read_text() == "x"
    assert list(out.parent.iterdir()) == [out]


def test_atomic_path_failure_leaves_nothing(tmp_path):
    out = tmp_path / "map.tif"
    with pytest.raises(RuntimeError), atomic.atomic_path(out) as tmp:
        tmp.write_text("half")
        tmp.with_name(tmp.name + ".aux.xml").write_text("aux")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_moves_aux_and_drops_stale_aux(tmp_path):
    out = tmp_path / "map.tif"
    (tmp_path / "map.tif.aux.xml").write_text("old statistics")
    with atomic.atomic_path(out) as tmp:
        tmp.write_text("new")
    assert not (tmp_path / "map.tif.aux.xml").exists()
    with atomic.atomic_path(out) as tmp:
        tmp.write_text("newer")
        tmp.with_name(tmp.name + ".aux.xml").write_text("fresh")
    assert (tmp_path / "map.tif.aux.xml").read_text() == "fresh"


def test_refuses_existing_without_overwrite(tmp_path):
    out = tmp_path / "a.json"
    out.write_text("keep")
    with pytest.raises(OutputError, match="--overwrite"):
        atomic.write_text(out, "new", overwrite=False)
    assert out.read_text() == "keep"


def test_disk_full_is_one_line(tmp_path, monkeypatch):
    out = tmp_path / "a.json"

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full)
    with pytest.raises(OutputError) as info:
        atomic.write_text(out, "x")
    msg = str(info.value)
    assert "No space left on device" in msg and "free some space" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []


def test_output_set_all_or_nothing(tmp_path):
    a, b = tmp_path / "m.fp32.onnx", tmp_path / "m.parity.json"
    with pytest.raises(ValueError), atomic.OutputSet() as outs:
        outs.path(a).write_text("a")
        outs.path(b).write_text("b")
        raise ValueError("gate failed")
    assert list(tmp_path.iterdir()) == []
    with atomic.OutputSet() as outs:
        outs.path(a).write_text("a")
        outs.path(b).write_text("b")
    assert a.read_text() == "a" and b.read_text() == "b"
    with pytest.raises(OutputError, match="exists"), atomic.OutputSet() as outs:
        outs.path(a)


def test_output_set_discard_and_unwritten(tmp_path):
    a, b = tmp_path / "x", tmp_path / "y"
    with atomic.OutputSet() as outs:
        outs.path(a).write_text("a")
        outs.path(b).write_text("b")
        outs.discard(b)
    assert a.exists() and not b.exists()
    with pytest.raises(OutputError, match="never written"), atomic.OutputSet(overwrite=True) as outs:
        outs.path(a)
    assert a.read_text() == "a"


def test_atomic_folder(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KeyError), atomic.atomic_folder(run) as tmp:
        (tmp / "f").write_text("x")
        raise KeyError
    assert list(tmp_path.iterdir()) == []
    with atomic.atomic_folder(run) as tmp:
        (tmp / "f").write_text("x")
    with pytest.raises(OutputError, match="not empty"), atomic.atomic_folder(run):
        pass
    with atomic.atomic_folder(run, overwrite=True) as tmp:
        (tmp / "g").write_text("y")
    assert sorted(p.name for p in run.iterdir()) == ["g"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_stale_temporaries_of_dead_processes_only(tmp_path):
    out = tmp_path / "map.tif"
    mine = atomic.temporary_path(out)
    mine.write_text("in progress")
    dead = atomic.temporary_path(out, pid=2**22 + 12345)
    dead.write_text("left over")
    assert atomic.is_temporary(dead)
    assert atomic.remove_stale_temporaries(out) == [dead]
    assert mine.exists()


def test_check_free_space(tmp_path):
    atomic.check_free_space(tmp_path, 1, what="x")
    with pytest.raises(OutputError, match="not enough space"):
        atomic.check_free_space(tmp_path / "new" / "f", 2**62, what="the class map")


def test_scratch_files_are_always_removed_and_never_taken_for_stale(tmp_path):
    out = tmp_path / "m.int8.onnx"
    with atomic.scratch_path(out, "pre") as pre:
        assert pre.name == f".m.int8.onnx.pre.{os.getpid()}.part" and atomic.is_temporary(pre)
        pre.write_text("x")
        # A running job's scratch file is kept by another job's clean-up.
        assert atomic.remove_stale_temporaries(out) == []
        assert pre.exists()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError), atomic.scratch_path(out, "q") as q:
        q.write_text("x")
        raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_stale_aux_sidecar_of_a_dead_temporary_is_removed(tmp_path):
    out = tmp_path / "map.tif"
    dead = atomic.temporary_path(out, pid=2**22 + 12345)
    aux = dead.with_name(dead.name + ".aux.xml")
    aux.write_text("gdal statistics")
    assert atomic.remove_stale_temporaries(out) == [aux]


def test_library_error_on_a_full_disk_is_explained(tmp_path, monkeypatch):
    class GdalError(Exception):
        pass

    exc = GdalError("TIFFAppendToStrip:Write error at scanline 0\nsecond line")
    msg = str(atomic.output_error(tmp_path / "m.tif", exc))
    assert "Write error at scanline 0" in msg and "second line" not in msg and "check the output" in msg

    class Usage:
        free = 10

    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda _p: Usage)
    msg = str(atomic.output_error(tmp_path / "m.tif", exc))
    assert "the disk is full" in msg and "free some space" in msg and "\n" not in msg


def test_output_set_abandoned_removes_the_folders_it_made(tmp_path):
    with pytest.raises(RuntimeError), atomic.OutputSet() as outs:
        outs.path(tmp_path / "a" / "b" / "x").write_text("x")
        outs.path(tmp_path / "a" / "b" / "c" / "y").write_text("y")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_output_set_per_output_overwrite(tmp_path):
    report, model = tmp_path / "r.md", tmp_path / "m.onnx"
    report.write_text("old report")
    with atomic.OutputSet() as outs:
        outs.path(report, overwrite=True).write_text("new report")
        tmp = outs.path(model)
        assert outs.temporary(model) == tmp
        tmp.write_text("m")
    assert report.read_text() == "new report" and model.read_text() == "m"


def test_nearest_existing_is_where_a_missing_folder_would_be_made(tmp_path):
    assert atomic.nearest_existing(tmp_path / "a" / "b" / "c.tif") == tmp_path
    assert atomic.nearest_existing(tmp_path) == tmp_path
