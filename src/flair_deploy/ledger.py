"""What a map depends on, and which chunks of a job are done: :class:`JobSettings` and :class:`Ledger`.

:class:`JobSettings` is the one value that says how a map was (or will be) made: the model (name and
SHA-256), the precision it ran at, tiling and stitching, what the pixel values mean, the raster bands
fed to it, the padding, which outputs were written and their block size. ``detect`` writes it into
every output as GeoTIFF tags (:meth:`JobSettings.to_tags`); ``--resume`` reads it back
(:meth:`JobSettings.from_tags`) and compares (:meth:`JobSettings.difference`), so that a map made
another way is never taken as finished.

:class:`Ledger` records a job cut into chunks (:class:`~flair_deploy.inference.chunks.Chunk`): one SQLite
file with the job's settings and one row per chunk (input raster, bounds, state, attempts, worker,
checksum of the committed chunk file, failure reason, times). Every change is one transaction, so a
driver that dies at any point leaves a ledger from which a restarted job redoes only the chunks that
were not committed; a chunk committed twice (a retried worker that was only slow) keeps its first
commit. The ledger of output ``--out OUT`` lives beside it, ``OUT.ledger.sqlite``
(:func:`ledger_path`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import ValidationError

from flair_deploy.atomic import OutputLock, output_error
from flair_deploy.config import FrozenConfig
from flair_deploy.errors import InputDataError, OutputError

if TYPE_CHECKING:  # the bottom layer does not import the inference package when it is loaded
    from flair_deploy.inference.chunks import Chunk

__all__ = [
    "LEDGER_SUFFIX",
    "SETTINGS_TAG",
    "ChunkState",
    "JobSettings",
    "Ledger",
    "LedgerChunk",
    "LedgerSummary",
    "ledger_path",
]

#: GeoTIFF tag holding the whole :class:`JobSettings` as JSON.
SETTINGS_TAG = "JOB_SETTINGS"
#: Suffix of a ledger file, appended to the output's name.
LEDGER_SUFFIX = ".ledger.sqlite"

ClassValues = Literal["FLAIR class codes", "logit indices"]
OutputKind = Literal["classes", "probabilities", "confidence"]

# The tags detect wrote before JOB_SETTINGS existed, with the field each one holds. Kept, with their
# names and values, so that GIS users and older maps read the same.
_FIELD_TAGS = {
    "model_name": "MODEL_NAME",
    "model_sha256": "MODEL_SHA256",
    "precision": "PRECISION",
    "stitching": "STITCHING",
    "class_values": "CLASS_VALUES",
}

# Compared in this order (the first difference is reported), with the words used in messages.
_LABELS = {
    "model_name": "model",
    "model_sha256": "model SHA-256",
    "precision": "precision",
    "class_values": "class values",
    "tile": "tile size",
    "stitching": "stitching",
    "bands": "bands",
    "pad_mode": "padding",
    "outputs": "outputs",
    "block": "block size",
}


class JobSettings(FrozenConfig):
    """Everything a map's pixels and layout depend on (not the backend, threads or batch size).

    A field that is None was not recorded (a map made by a flair-deploy that did not write it) and is
    not compared.

    Attributes:
        model_sha256: SHA-256 of the model's source weights (``"unknown"`` when not known).
        model_name: The model description's name.
        precision: Precision the network ran at (``fp32``, ``fp16``, ``int8``...).
        stitching: Stitching and tiling label, e.g. ``blend tile=512 overlap=128 border=16``.
        class_values: What the class map's values are: ``FLAIR class codes`` or ``logit indices``.
        tile: Tile edge in pixels.
        bands: 1-based raster bands fed to the model's bands, in order.
        pad_mode: Fill of the pixels outside the raster (``reflect`` or ``constant``).
        outputs: The rasters written per input (``classes``, ``probabilities``, ``confidence``).
        block: Output block (GeoTIFF tile) size in pixels.
    """

    model_sha256: str
    model_name: str
    precision: str
    stitching: str
    class_values: ClassValues
    tile: int | None = None
    bands: tuple[int, ...] | None = None
    pad_mode: str | None = None
    outputs: tuple[OutputKind, ...] | None = None
    block: int | None = None

    def to_tags(self) -> dict[str, str]:
        """The GeoTIFF tags recording these settings: the readable ones and :data:`SETTINGS_TAG`."""
        tags = {tag: str(getattr(self, key)) for key, tag in _FIELD_TAGS.items()}
        tags[SETTINGS_TAG] = self.model_dump_json()
        return tags

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], *, source: str = "the map") -> JobSettings | None:
        """Read settings back from a map's tags; None when they are not a flair-deploy map's.

        :data:`SETTINGS_TAG` is authoritative. A map written before it existed still has the readable
        tags: its settings are rebuilt from them (tile size from the stitching label), the rest
        unrecorded.

        Args:
            tags: The dataset's tags (default namespace).
            source: What the tags come from, for messages.

        Raises:
            InputDataError: If :data:`SETTINGS_TAG` is present but not valid settings.
        """
        raw = tags.get(SETTINGS_TAG)
        if raw is not None:
            try:
                return cls.model_validate_json(raw)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "value"
                raise InputDataError(
                    f"{source} has a {SETTINGS_TAG} tag that is not flair-deploy job settings ({where}: "
                    f"{first['msg']}); use --overwrite to recompute it"
                ) from None
        values = {key: tags.get(tag) for key, tag in _FIELD_TAGS.items()}
        if any(v is None for v in values.values()):
            return None
        tile = re.search(r"\btile=(\d+)\b", values["stitching"] or "")
        try:
            return cls.model_validate({**values, "tile": int(tile.group(1)) if tile else None})
        except ValidationError:
            return None  # e.g. an unknown CLASS_VALUES: not tags this project wrote

    def difference(self, other: JobSettings) -> str | None:
        """Name the first setting in which *other* (this run) differs from *self* (recorded), or None.

        Returns:
            E.g. ``precision int8, this run is fp32``, to follow "OUT was made with"; None when every
            setting recorded on both sides agrees.
        """
        for key, label in _LABELS.items():
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine is None or theirs is None or mine == theirs:
                continue
            return f"{label} {_show(key, mine, theirs)}, this run is {_show(key, theirs, mine)}"
        return None


def _show(key: str, value: Any, other: Any) -> str:
    if key == "model_sha256" and isinstance(value, str) and isinstance(other, str):
        # Twelve hex digits tell two models apart; the full hash only when those agree.
        return value if value[:12] == other[:12] else value[:12] + "…"
    if key == "bands":
        return ",".join(str(b) for b in value)
    if key == "outputs":
        return "+".join(value)
    return str(value)


def ledger_path(output: Path) -> Path:
    """Return the ledger file of output *output* (a map or an output folder): ``OUTPUT.ledger.sqlite``.

    Beside the output, not inside it, so that an output folder holds only maps; visible, because it is
    the record of the job (``sqlite3 OUT.ledger.sqlite 'select * from chunks'``).
    """
    return output.with_name(output.name + LEDGER_SUFFIX)


class ChunkState(StrEnum):
    """Where a chunk of a job stands."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class LedgerChunk:
    """One chunk as the ledger records it.

    Attributes:
        input: The input raster (absolute path).
        chunk: The chunk (block-aligned output window, its tiles).
        state: Its state.
        attempts: Times it was started.
        worker: The worker that last started, failed or committed it.
        checksum: SHA-256 of the committed chunk file (``done`` only).
        reason: Why it last failed.
        started: When it was last started (Unix time).
        finished: When it was committed or last failed (Unix time).
    """

    input: Path
    chunk: Chunk
    state: ChunkState
    attempts: int
    worker: str | None
    checksum: str | None
    reason: str | None
    started: float | None
    finished: float | None

    @property
    def id(self) -> str:
        """The chunk's id (``r0003c0012``), unique within its input."""
        return self.chunk.id


@dataclass(frozen=True, slots=True)
class LedgerSummary:
    """Counts per state and the chunks that failed.

    Attributes:
        counts: Chunks per state (every state present, 0 included).
        failed: The failed chunks, in order, with their reasons.
    """

    counts: Mapping[ChunkState, int]
    failed: tuple[LedgerChunk, ...]

    @property
    def total(self) -> int:
        """Chunks in the job."""
        return sum(self.counts.values())

    @property
    def complete(self) -> bool:
        """True when every chunk is committed."""
        return self.counts[ChunkState.DONE] == self.total


_SCHEMA = """
CREATE TABLE IF NOT EXISTS job (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    settings TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    input TEXT NOT NULL,
    chunk_id TEXT NOT NULL,
    chunk TEXT NOT NULL,
    row0 INTEGER NOT NULL, col0 INTEGER NOT NULL, row1 INTEGER NOT NULL, col1 INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    checksum TEXT,
    reason TEXT,
    added REAL NOT NULL,
    started REAL,
    finished REAL,
    UNIQUE (input, chunk_id)
);
"""

_COLUMNS = "input, chunk, state, attempts, worker, checksum, reason, started, finished"

#: Seconds a statement waits for another connection's write lock before it fails.
_BUSY_TIMEOUT_S = 30.0


class Ledger:
    """The chunk ledger of one job: a SQLite file in WAL mode, one transaction per change.

    Open it with :meth:`open`, close it (or leave its ``with`` block) when the job ends. Only the
    job's driver opens it, and only one driver at a time: the ledger holds an
    :class:`~flair_deploy.atomic.OutputLock` on its file while open. WAL needs every process that uses
    the database on one host (it shares an index in memory), so workers on other nodes report to the
    driver, which records. All methods are safe to call from several threads of the driver.

    Crash safety: the job row and every state change are single transactions (``synchronous=FULL``),
    so the file always reflects a prefix of the driver's calls. A chunk that was running when the
    driver died is simply not done: :meth:`pending` returns it again.
    """

    def __init__(
        self, path: Path, connection: sqlite3.Connection, settings: JobSettings, lock: OutputLock
    ) -> None:
        self.path = path
        self.settings = settings
        self._db = connection
        self._lock = lock
        self._guard = threading.Lock()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: Path, settings: JobSettings, *, overwrite: bool) -> Ledger:
        """Open (create, resume or reset) the ledger at *path* for a job with *settings*.

        * no ledger yet: a new job;
        * a ledger of a job with the same settings: that job, resumed (committed chunks stay done);
        * a ledger of a job with other settings: refused, unless *overwrite*, which resets it.

        Args:
            path: The ledger file (see :func:`ledger_path`).
            settings: This job's settings.
            overwrite: Start afresh whatever the ledger holds.

        Raises:
            OutputError: Other settings without *overwrite* (naming the first differing setting and
                both values), a file that is not a ledger, or a folder that cannot be written.
        """
        lock = OutputLock(path)
        lock.acquire()  # one driver per job: a second one is refused, naming the first
        try:
            if overwrite:
                _remove_database(path)
            try:
                db = _connect(path)
            except sqlite3.DatabaseError as exc:
                raise _ledger_error(path, exc) from None
            try:
                recorded = cls._read_or_create(db, path, settings)
                diff = recorded.difference(settings) if recorded is not None else None
                if diff is not None:
                    raise OutputError(
                        f"ledger {path} is of a job made with {diff}; use --overwrite to recompute it"
                    )
            except BaseException:
                db.close()
                raise
        except BaseException:
            lock.release()
            raise
        return cls(path, db, settings, lock)

    @staticmethod
    def _read_or_create(db: sqlite3.Connection, path: Path, settings: JobSettings) -> JobSettings | None:
        """Return the recorded settings of an existing job, or create the job and return None."""
        try:
            with _transaction(db):
                # Statement by statement: executescript would commit the open transaction first.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                row = db.execute("SELECT settings FROM job WHERE id = 1").fetchone()
                if row is None:
                    # The schema and the job row appear together: a crash in between leaves an empty
                    # database, which the next open treats as a new job.
                    db.execute(
                        "INSERT INTO job (id, settings, created) VALUES (1, ?, ?)",
                        (settings.model_dump_json(), time.time()),
                    )
                    return None
        except sqlite3.DatabaseError as exc:
            raise _ledger_error(path, exc) from None
        try:
            return JobSettings.model_validate_json(row[0])
        except ValidationError:
            raise OutputError(
                f"ledger {path} records job settings this flair-deploy cannot read; use --overwrite to "
                "recompute it"
            ) from None

    def close(self) -> None:
        """Close the database and release the job (the file stays: it is the job's record)."""
        with self._guard:
            self._db.close()
            self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ recording
    def add_chunks(self, input: Path, chunks: Iterable[Chunk]) -> int:
        """Record the chunks of *input* as pending; return how many were new.

        Adding the same chunks again (a resumed job plans them again) changes nothing.

        Raises:
            OutputError: If the ledger already holds other chunks for *input* (the chunk size or the
                block size changed since the job started).
        """
        key = _input_key(input)
        planned = {c.id: c for c in chunks}
        now = time.time()
        with self._write() as db:
            rows = db.execute("SELECT chunk_id, chunk FROM chunks WHERE input = ?", (key,)).fetchall()
            if rows:
                recorded = {cid: json.loads(text) for cid, text in rows}
                if recorded != {cid: c.to_dict() for cid, c in planned.items()}:
                    raise OutputError(
                        f"ledger {self.path} records {len(recorded)} chunk(s) of {input} that differ "
                        f"from the {len(planned)} planned now (was the chunk or block size changed?); "
                        "use the job's settings again, or --overwrite to recompute it"
                    )
                return 0
            db.executemany(
                "INSERT INTO chunks (input, chunk_id, chunk, row0, col0, row1, col1, state, added) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                [
                    (
                        key,
                        c.id,
                        json.dumps(c.to_dict()),
                        c.output.row0,
                        c.output.col0,
                        c.output.row1,
                        c.output.col1,
                        now,
                    )
                    for c in planned.values()
                ],
            )
            return len(planned)

    def start(self, input: Path, chunk_id: str, worker: str) -> bool:
        """Record that *worker* starts a chunk; False (and no change) when it is already done.

        Raises:
            KeyError: If the ledger has no such chunk.
        """
        return self._update(
            input,
            chunk_id,
            "state = 'running', attempts = attempts + 1, worker = ?, started = ?, reason = NULL",
            (worker, time.time()),
        )

    def commit(self, input: Path, chunk_id: str, checksum: str, worker: str) -> bool:
        """Record a chunk as done, once: True the first time, False (first commit kept) after.

        Call it after the chunk's file is complete under its final name, with that file's SHA-256.

        Raises:
            KeyError: If the ledger has no such chunk.
        """
        return self._update(
            input,
            chunk_id,
            "state = 'done', checksum = ?, worker = ?, finished = ?, reason = NULL",
            (checksum, worker, time.time()),
        )

    def fail(self, input: Path, chunk_id: str, reason: str, worker: str) -> bool:
        """Record that a chunk failed (it stays to do); False (and no change) when it is already done.

        Raises:
            KeyError: If the ledger has no such chunk.
        """
        return self._update(
            input,
            chunk_id,
            "state = 'failed', reason = ?, worker = ?, finished = ?",
            (reason, worker, time.time()),
        )

    def reopen(self, input: Path, chunk_id: str, reason: str) -> bool:
        """Make a committed chunk pending again (its file was lost): True when it was done.

        Raises:
            KeyError: If the ledger has no such chunk.
        """
        return self._update(
            input,
            chunk_id,
            "state = 'pending', checksum = NULL, reason = ?, finished = ?",
            (reason, time.time()),
            done=True,
        )

    def _update(
        self, input: Path, chunk_id: str, assignments: str, values: tuple[Any, ...], *, done: bool = False
    ) -> bool:
        """One transaction: set *assignments* on a chunk that is not done (with *done*: that is done).

        Returns:
            Whether the chunk changed.

        Raises:
            KeyError: If the ledger has no such chunk.
        """
        state = "state = 'done'" if done else "state != 'done'"
        with self._write() as db:
            # The SQL text is this class's own literals; every value goes through a parameter.
            cur = db.execute(
                f"UPDATE chunks SET {assignments} WHERE input = ? AND chunk_id = ? AND {state}",
                (*values, _input_key(input), chunk_id),
            )
            return self._changed(db, cur, input, chunk_id)

    @staticmethod
    def _changed(db: sqlite3.Connection, cur: sqlite3.Cursor, input: Path, chunk_id: str) -> bool:
        if cur.rowcount:
            return True
        known = db.execute(
            "SELECT 1 FROM chunks WHERE input = ? AND chunk_id = ?", (_input_key(input), chunk_id)
        ).fetchone()
        if known is None:
            raise KeyError(f"no chunk {chunk_id} of {input} in the ledger")
        return False

    # ------------------------------------------------------------------ reading
    def pending(self) -> list[LedgerChunk]:
        """The chunks not done (pending, failed, or running when a driver died), in the order added."""
        return self._select("WHERE state != 'done' ORDER BY seq")

    def chunk(self, input: Path, chunk_id: str) -> LedgerChunk:
        """The record of one chunk.

        Raises:
            KeyError: If the ledger has no such chunk.
        """
        rows = self._select("WHERE input = ? AND chunk_id = ?", (_input_key(input), chunk_id))
        if not rows:
            raise KeyError(f"no chunk {chunk_id} of {input} in the ledger")
        return rows[0]

    def summary(self) -> LedgerSummary:
        """Chunks per state, and the failed ones with their reasons."""
        with self._read() as db:
            counted = dict(db.execute("SELECT state, COUNT(*) FROM chunks GROUP BY state").fetchall())
        counts = {s: int(counted.get(s.value, 0)) for s in ChunkState}
        return LedgerSummary(counts, tuple(self._select("WHERE state = 'failed' ORDER BY seq")))

    def _select(self, where: str, args: tuple[Any, ...] = ()) -> list[LedgerChunk]:
        from flair_deploy.inference.chunks import Chunk

        with self._read() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM chunks {where}", args).fetchall()
        return [
            LedgerChunk(
                Path(inp),
                Chunk.from_dict(json.loads(chunk)),
                ChunkState(state),
                int(attempts),
                worker,
                checksum,
                reason,
                started,
                finished,
            )
            for inp, chunk, state, attempts, worker, checksum, reason, started, finished in rows
        ]

    # ------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._guard:
            try:
                with _transaction(self._db):
                    yield self._db
            except sqlite3.DatabaseError as exc:
                raise _ledger_error(self.path, exc) from None

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._guard:
            try:
                yield self._db
            except sqlite3.DatabaseError as exc:
                raise _ledger_error(self.path, exc) from None


def _input_key(input: Path) -> str:
    # Absolute, so that a job restarted from another working directory finds its chunks.
    return os.path.abspath(input)


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit: transactions are explicit (BEGIN IMMEDIATE), one per change.
    db = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed chunk survives a power cut too, not only a crash of the driver.
        db.execute("PRAGMA synchronous=FULL")
    except BaseException:
        db.close()
        raise
    return db


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front: a read-then-write never fails halfway on a busy file.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _remove_database(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            p.unlink(missing_ok=True)
        except OSError as exc:
            raise output_error(path, exc) from None


def _ledger_error(path: Path, exc: sqlite3.DatabaseError) -> OutputError:
    """One line for a ledger SQLite cannot use: a full disk, an unwritable folder, not a database."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
        return output_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM):
        return output_error(path, OSError(errno.EACCES, str(exc)))
    return OutputError(
        f"{path} is not a usable flair-deploy ledger ({exc}); remove it or pass --overwrite to recompute"
    )
