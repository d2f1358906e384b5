"""Job settings (what a map depends on) and the chunk ledger (which chunks of a job are done)."""

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from flair_deploy.errors import InputDataError, OutputError
from flair_deploy.inference.chunks import plan_chunks
from flair_deploy.inference.tiling import TilingPlan, make_grid
from flair_deploy.ledger import (
    SETTINGS_TAG,
    ChunkState,
    JobSettings,
    Ledger,
    ledger_path,
)

SHA = "0123456789abcdef" * 4


def _settings(**kw):
    values = {
        "model_sha256": SHA,
        "model_name": "tiny",
        "precision": "fp32",
        "stitching": "blend tile=64 overlap=16 border=2",
        "class_values": "FLAIR class codes",
        "tile": 64,
        "bands": (1, 2, 3, 4, 5),
        "pad_mode": "reflect",
        "outputs": ("classes",),
        "block": 32,
    }
    return JobSettings(**{**values, **kw})


def _chunks(w=300, h=200):
    grid = make_grid(w, h, TilingPlan.blend(64, 16))
    return list(plan_chunks(grid, chunk_width=128, chunk_height=64, block=32))


# ---------------------------------------------------------------------- settings
def test_settings_round_trip_through_tags_keeping_the_readable_ones():
    s = _settings(precision="int8", outputs=("classes", "confidence"))
    tags = s.to_tags()
    assert tags["MODEL_SHA256"] == SHA and tags["PRECISION"] == "int8"
    assert tags["STITCHING"] == "blend tile=64 overlap=16 border=2"
    assert tags["CLASS_VALUES"] == "FLAIR class codes" and tags["MODEL_NAME"] == "tiny"
    assert json.loads(tags[SETTINGS_TAG])["bands"] == [1, 2, 3, 4, 5]
    assert JobSettings.from_tags({**tags, "CLASS_1": "building"}) == s


def test_settings_of_a_map_tagged_before_job_settings_existed():
    legacy = {k: v for k, v in _settings().to_tags().items() if k != SETTINGS_TAG}
    old = JobSettings.from_tags(legacy)
    assert old is not None and old.tile == 64 and old.bands is None and old.block is None
    # What was not recorded is not compared; what was, is.
    assert old.difference(_settings()) is None
    assert old.difference(_settings(precision="fp16")) == "precision fp32, this run is fp16"


def test_tags_that_are_not_a_flair_deploy_map_give_none_and_a_bad_settings_tag_one_line():
    assert JobSettings.from_tags({"AREA_OR_POINT": "Area"}) is None
    assert JobSettings.from_tags({"MODEL_SHA256": SHA, "PRECISION": "fp32"}) is None
    with pytest.raises(InputDataError) as exc:
        JobSettings.from_tags({SETTINGS_TAG: '{"model_name": "tiny"}'}, source="out.tif")
    assert str(exc.value).startswith(
        f"out.tif has a {SETTINGS_TAG} tag that is not flair-deploy job settings"
    )
    assert str(exc.value).endswith("use --overwrite to recompute it") and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"model_name": "other"}, "model tiny, this run is other"),
        ({"model_sha256": "f" * 64}, "model SHA-256 0123456789ab…, this run is ffffffffffff…"),
        ({"precision": "fp32"}, None),
        ({"class_values": "logit indices"}, "class values FLAIR class codes, this run is logit indices"),
        ({"tile": 128}, "tile size 64, this run is 128"),
        (
            {"stitching": "crop tile=64 margin=16"},
            "stitching blend tile=64 overlap=16 border=2, this run is crop tile=64 margin=16",
        ),
        ({"bands": (3, 2, 1, 4, 5)}, "bands 1,2,3,4,5, this run is 3,2,1,4,5"),
        ({"pad_mode": "constant"}, "padding reflect, this run is constant"),
        ({"outputs": ("classes", "probabilities")}, "outputs classes, this run is classes+probabilities"),
        ({"block": 256}, "block size 32, this run is 256"),
    ],
)
def test_difference_names_the_first_differing_setting_with_both_values(change, expected):
    assert _settings().difference(_settings(**change)) == expected


def test_difference_reports_the_first_key_in_order():
    assert _settings().difference(_settings(precision="int8", block=64)) == "precision fp32, this run is int8"


# ---------------------------------------------------------------------- ledger
def test_ledger_lives_beside_the_output(tmp_path):
    assert ledger_path(tmp_path / "map.tif") == tmp_path / "map.tif.ledger.sqlite"
    assert ledger_path(tmp_path / "maps") == tmp_path / "maps.ledger.sqlite"


def test_a_new_job_records_its_chunks_in_order_and_in_wal_mode(tmp_path):
    path = tmp_path / "out" / "map.tif.ledger.sqlite"
    chunks = _chunks()
    src = tmp_path / "ortho.tif"
    with Ledger.open(path, _settings(), overwrite=False) as ledger:
        assert ledger.add_chunks(src, chunks) == len(chunks) > 4
        assert ledger.add_chunks(src, chunks) == 0  # planned again on resume: nothing changes
        pending = ledger.pending()
        assert [p.chunk for p in pending] == chunks and {p.state for p in pending} == {ChunkState.PENDING}
        assert pending[0].input == src and pending[0].id == chunks[0].id == "r0000c0000"
        assert ledger.summary().counts[ChunkState.PENDING] == len(chunks)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = db.execute(
        "SELECT input, chunk_id, row0, col0, row1, col1, state FROM chunks ORDER BY seq"
    ).fetchone()
    assert row == (str(src), "r0000c0000", 0, 0, 64, 128, "pending")
    assert json.loads(db.execute("SELECT settings FROM job").fetchone()[0]) == json.loads(
        _settings().model_dump_json()
    )
    db.close()


def test_start_commit_fail_and_summary(tmp_path):
    chunks = _chunks()
    src = tmp_path / "ortho.tif"
    with Ledger.open(tmp_path / "l.sqlite", _settings(), overwrite=False) as ledger:
        ledger.add_chunks(src, chunks)
        a, b, c = (ch.id for ch in chunks[:3])
        assert ledger.start(src, a, "w1")
        assert ledger.chunk(src, a).state is ChunkState.RUNNING and ledger.chunk(src, a).attempts == 1
        assert ledger.commit(src, a, "aa" * 32, "w1") is True
        # Committed once: a slow duplicate of the same chunk does not replace the first commit.
        assert ledger.commit(src, a, "bb" * 32, "w2") is False
        assert ledger.start(src, a, "w3") is False and ledger.fail(src, a, "late", "w3") is False
        rec = ledger.chunk(src, a)
        assert (rec.state, rec.checksum, rec.worker, rec.attempts) == (ChunkState.DONE, "aa" * 32, "w1", 1)
        assert rec.finished is not None and rec.started is not None
        ledger.start(src, b, "w2")
        assert ledger.fail(src, b, "InputDataError: cannot read window", "w2")
        ledger.start(src, c, "w1")  # still running
        summary = ledger.summary()
        assert summary.counts == {
            ChunkState.PENDING: len(chunks) - 3,
            ChunkState.RUNNING: 1,
            ChunkState.DONE: 1,
            ChunkState.FAILED: 1,
        }
        assert [(f.id, f.reason, f.worker) for f in summary.failed] == [
            (b, "InputDataError: cannot read window", "w2")
        ]
        assert summary.total == len(chunks) and not summary.complete
        # Failed and running chunks are still to do; done ones are not.
        assert [p.id for p in ledger.pending()] == [ch.id for ch in chunks[1:]]
        ledger.start(src, b, "w1")
        assert ledger.chunk(src, b).attempts == 2 and ledger.chunk(src, b).reason is None
        for ch in chunks[1:]:
            ledger.commit(src, ch.id, "cc" * 32, "w1")
        assert ledger.pending() == [] and ledger.summary().complete
        with pytest.raises(KeyError):
            ledger.commit(src, "r9999c9999", "dd" * 32, "w1")
        with pytest.raises(KeyError):
            ledger.start(tmp_path / "other.tif", a, "w1")


def test_chunks_of_several_inputs_are_kept_apart(tmp_path):
    with Ledger.open(tmp_path / "l.sqlite", _settings(), overwrite=False) as ledger:
        one, two = tmp_path / "a.tif", tmp_path / "b.tif"
        ledger.add_chunks(one, _chunks())
        ledger.add_chunks(two, _chunks(100, 60))
        ledger.commit(one, "r0000c0000", "aa" * 32, "w")
        assert ledger.chunk(two, "r0000c0000").state is ChunkState.PENDING
        assert [p.input for p in ledger.pending()][-1] == two


def test_resuming_with_the_same_settings_keeps_what_was_committed(tmp_path):
    path, src, chunks = tmp_path / "l.sqlite", tmp_path / "ortho.tif", _chunks()
    with Ledger.open(path, _settings(), overwrite=False) as ledger:
        ledger.add_chunks(src, chunks)
        ledger.commit(src, chunks[0].id, "aa" * 32, "w")
        ledger.start(src, chunks[1].id, "w")  # the driver "dies" with this one running
    with Ledger.open(path, _settings(), overwrite=False) as ledger:
        assert ledger.add_chunks(src, chunks) == 0
        assert [p.id for p in ledger.pending()] == [c.id for c in chunks[1:]]
        assert ledger.chunk(src, chunks[1].id).state is ChunkState.RUNNING


def test_other_settings_are_refused_in_one_line_unless_overwrite(tmp_path):
    path, src, chunks = tmp_path / "l.sqlite", tmp_path / "ortho.tif", _chunks()
    with Ledger.open(path, _settings(precision="int8"), overwrite=False) as ledger:
        ledger.add_chunks(src, chunks)
        ledger.commit(src, chunks[0].id, "aa" * 32, "w")
    with pytest.raises(OutputError) as exc:
        Ledger.open(path, _settings(), overwrite=False)
    assert str(exc.value) == (
        f"ledger {path} is of a job made with precision int8, this run is fp32; use --overwrite to recompute it"
    )
    with Ledger.open(path, _settings(), overwrite=True) as ledger:
        assert ledger.summary().total == 0
        ledger.add_chunks(src, chunks)
        assert len(ledger.pending()) == len(chunks)
    with Ledger.open(path, _settings(), overwrite=False):
        pass  # the reset job is now this one


def test_a_changed_chunk_plan_is_refused(tmp_path):
    src = tmp_path / "ortho.tif"
    with Ledger.open(tmp_path / "l.sqlite", _settings(), overwrite=False) as ledger:
        ledger.add_chunks(src, _chunks())
        grid = make_grid(300, 200, TilingPlan.blend(64, 16))
        wider = list(plan_chunks(grid, chunk_width=256, chunk_height=64, block=32))
        with pytest.raises(OutputError, match=r"differ from the .* planned now .*--overwrite") as exc:
            ledger.add_chunks(src, wider)
        assert "\n" not in str(exc.value)


def test_one_driver_per_ledger(tmp_path):
    path = tmp_path / "l.sqlite"
    with (
        Ledger.open(path, _settings(), overwrite=False),
        pytest.raises(OutputError, match="is being written by another flair-deploy job"),
    ):
        Ledger.open(path, _settings(), overwrite=False)
    with Ledger.open(path, _settings(), overwrite=False):
        pass


def test_a_file_that_is_not_a_ledger_is_one_line_and_overwrite_replaces_it(tmp_path):
    path = tmp_path / "l.sqlite"
    path.write_bytes(b"this is not a database, just some bytes " * 40)
    with pytest.raises(OutputError, match=r"is not a usable flair-deploy ledger .*--overwrite") as exc:
        Ledger.open(path, _settings(), overwrite=False)
    assert "\n" not in str(exc.value)
    with Ledger.open(path, _settings(), overwrite=True) as ledger:
        assert ledger.summary().total == 0


def test_an_empty_database_left_by_a_crash_while_creating_is_a_new_job(tmp_path):
    path = tmp_path / "l.sqlite"
    sqlite3.connect(path).close()  # created, nothing committed
    with Ledger.open(path, _settings(), overwrite=False) as ledger:
        assert ledger.summary().total == 0


_DRIVER = """
import sys
from pathlib import Path
from flair_deploy.inference.chunks import plan_chunks
from flair_deploy.inference.tiling import TilingPlan, make_grid
from flair_deploy.ledger import JobSettings, Ledger

settings = JobSettings.model_validate_json(sys.argv[2])
grid = make_grid(4000, 4000, TilingPlan.blend(64, 16))
chunks = list(plan_chunks(grid, chunk_width=64, chunk_height=64, block=32))
ledger = Ledger.open(Path(sys.argv[1]), settings, overwrite=False)
src = Path(sys.argv[3])
ledger.add_chunks(src, chunks)
for chunk in ledger.pending():
    ledger.start(src, chunk.id, "driver")
    ledger.commit(src, chunk.id, "ab" * 32, "driver")
    print(chunk.id, flush=True)
"""


def test_a_driver_killed_at_any_point_leaves_a_ledger_that_redoes_only_uncommitted_chunks(tmp_path):
    path, src = tmp_path / "l.sqlite", tmp_path / "ortho.tif"
    settings = _settings()
    grid = make_grid(4000, 4000, TilingPlan.blend(64, 16))
    chunks = list(plan_chunks(grid, chunk_width=64, chunk_height=64, block=32))
    reported: list[str] = []
    for stop_after in (5, 40):  # killed twice, mid-stream; each restart goes on where it stopped
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_DRIVER), str(path), settings.model_dump_json(), str(src)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        for _ in range(stop_after):
            reported.append(proc.stdout.readline().strip())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Ledger.open(path, settings, overwrite=False) as ledger:
            done = [c.id for c in chunks if ledger.chunk(src, c.id).state is ChunkState.DONE]
            # Every commit the driver saw return is there, and commits went in order: a prefix.
            assert set(reported) <= set(done)
            assert done == [c.id for c in chunks[: len(done)]]
            assert [p.id for p in ledger.pending()] == [c.id for c in chunks[len(done) :]]
            assert ledger.summary().counts[ChunkState.DONE] == len(done) < len(chunks)
        assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_committed_chunk_whose_file_was_lost_can_be_reopened(tmp_path):
    from flair_deploy.inference.chunks import plan_chunks
    from flair_deploy.inference.tiling import TilingPlan, make_grid
    from flair_deploy.ledger import ChunkState, JobSettings, Ledger

    settings = JobSettings(
        model_sha256="a" * 64,
        model_name="m",
        precision="fp32",
        stitching="blend",
        class_values="FLAIR class codes",
    )
    grid = make_grid(300, 200, TilingPlan.blend(64, 16))
    chunks = plan_chunks(grid, chunk_width=128, chunk_height=256, block=64).chunks
    src = tmp_path / "in.tif"
    with Ledger.open(tmp_path / "job.sqlite", settings, overwrite=False) as led:
        led.add_chunks(src, chunks)
        c = chunks[0].id
        assert led.commit(src, c, "f" * 64, "w0")
        assert not led.fail(src, c, "late failure", "w1")  # a done chunk stays done...
        assert led.reopen(src, c, "its file was deleted")  # ...unless its file is gone
        assert led.chunk(src, c).state is ChunkState.PENDING and not led.reopen(src, c, "again")
        assert led.commit(src, c, "e" * 64, "w1") and led.chunk(src, c).checksum == "e" * 64
