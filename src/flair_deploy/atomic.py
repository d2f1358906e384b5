"""Atomic outputs: every file flair-deploy writes appears whole, or not at all.

One rule for the whole tree: an output is written under a hidden temporary name beside its final
name, ``.NAME.<pid>.part`` (the process id keeps two jobs from ever writing the same temporary file),
and renamed onto the final name only when complete. A failure or an interrupt removes the temporary
file, so nothing is left that could be mistaken for a finished output or that blocks a rerun.

* :func:`atomic_path`: one file (also moves GDAL's ``.aux.xml`` sidecar written beside it);
* :func:`write_text` / :func:`write_bytes`: small files in one call;
* :class:`OutputSet`: several files that appear together, all or none (an export's ONNX variants,
  engines and reports);
* :func:`atomic_folder`: a folder (a training run, a sample dataset) built under a temporary name;
* :func:`check_destination` / :func:`check_free_space`: the cheap up-front checks (exists without
  overwrite, folder not writable, not enough space) so that minutes of work are not wasted;
* :class:`OutputLock` / :func:`check_unlocked`: one job at a time per output. Temporary names keep two
  jobs from writing the same *file*, not from racing for the same *output*: the lock (``.NAME.lock``
  beside it) refuses the second job up front, and :func:`remove_stale_temporaries` never deletes the
  temporaries of an output whose lock is held.

Operating-system failures (disk full, read-only file system, permission denied) become one-line
:class:`~flair_deploy.errors.OutputError` messages naming the path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import shlex
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from flair_deploy.errors import OutputError

__all__ = [
    "LOCK_SUFFIX",
    "PART_SUFFIX",
    "LockHolder",
    "OutputLock",
    "OutputSet",
    "atomic_folder",
    "atomic_path",
    "check_destination",
    "check_free_space",
    "check_unlocked",
    "is_temporary",
    "lock_holder",
    "lock_path",
    "nearest_existing",
    "output_error",
    "remove_stale_temporaries",
    "scratch_path",
    "temporary_path",
    "write_bytes",
    "write_text",
]

PART_SUFFIX = ".part"
LOCK_SUFFIX = ".lock"
_AUX = ".aux.xml"


def temporary_path(path: Path, *, pid: int | None = None) -> Path:
    """Return the hidden in-progress name of *path*: ``.NAME.<pid>.part`` in the same folder.

    Args:
        path: The final output path.
        pid: Process id to embed (default: this process).
    """
    return path.with_name(f".{path.name}.{os.getpid() if pid is None else pid}{PART_SUFFIX}")


def is_temporary(path: Path) -> bool:
    """True for a name made by :func:`temporary_path` (any process)."""
    return path.name.startswith(".") and path.name.endswith(PART_SUFFIX)


@contextlib.contextmanager
def scratch_path(path: Path, tag: str) -> Iterator[Path]:
    """Yield a hidden working file beside *path* (``.NAME.<tag>.<pid>.part``), always removed after.

    For intermediate files that are never an output themselves (a raw export before simplification,
    a pre-processed graph before quantization).

    Args:
        path: The output the scratch file helps to produce.
        tag: What the scratch file holds (letters and digits), so that several can coexist.
    """
    tmp = temporary_path(path.with_name(f"{path.name}.{tag}"))
    try:
        yield tmp
    finally:
        _discard(tmp)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete temporaries of *path* left by processes that no longer run; return what was removed.

    Covers :func:`temporary_path` and :func:`scratch_path` names and GDAL's ``.aux.xml`` written
    beside them. Nothing is removed while *path*'s :class:`OutputLock` is held (by any process, on
    any node the lock reaches): its holder is writing those temporaries right now, and its process id
    means nothing on another machine or in another container. Without a lock, a temporary of a
    *running* local process is kept as well.
    """
    removed: list[Path] = []
    prefix = f".{path.name}."
    folder = path.parent
    if not folder.is_dir() or lock_holder(path) is not None:
        return removed
    for p in sorted(folder.iterdir()):
        name = p.name.removesuffix(_AUX)
        if not (name.startswith(prefix) and name.endswith(PART_SUFFIX)):
            continue
        # ``.NAME.<pid>.part`` or ``.NAME.<tag>.<pid>.part``: the pid is the last field.
        pid_text = name[len(prefix) : -len(PART_SUFFIX)].rsplit(".", 1)[-1]
        if pid_text.isdigit() and _process_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def output_error(path: Path, exc: BaseException) -> OutputError:
    """Turn a failure while writing *path* into one line saying what to do.

    Operating-system errors are recognised by their ``errno``. Errors of libraries that carry none
    (GDAL reports a full disk as a failed TIFF write) are explained by measuring the free space of the
    destination: next to nothing free means the disk is full.
    """
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    reason = (exc.strerror if isinstance(exc, OSError) else None) or _first_line(exc)
    if code is None and _nearly_full(path):
        code, reason = errno.ENOSPC, f"{reason} (the disk is full)" if reason else "the disk is full"
    if code == errno.ENOSPC:
        fix = "free some space or choose another output folder"
    elif code == errno.EDQUOT:
        fix = "the disk quota is exhausted; free some space or choose another output folder"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose a folder you can write to"
    else:
        fix = "check the output folder (free space, permissions)"
    return OutputError(f"cannot write {path}: {reason}; {fix}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def nearest_existing(path: Path) -> Path:
    """Return *path* or its nearest parent that exists (where a missing output folder would be made)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


#: Below this many free bytes a failed write is reported as a full disk.
_FULL_BYTES = 1 << 20


def _nearly_full(path: Path) -> bool:
    try:
        return shutil.disk_usage(nearest_existing(path.parent)).free < _FULL_BYTES
    except OSError:
        return False


def check_destination(path: Path, *, overwrite: bool = False, what: str = "output") -> None:
    """Refuse an output up front: it exists without *overwrite*, is a folder, or cannot be written.

    The nearest existing parent folder must be writable (missing folders are created when writing).

    Raises:
        OutputError: With the option or path to change.
    """
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise OutputError(f"{what} {path} exists; pass --overwrite to replace it")
    folder = nearest_existing(path.parent)
    if not folder.is_dir():
        raise OutputError(
            f"cannot write {path}: folder {folder} is not writable (it is a file); choose another output path"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: folder {folder} is not writable; choose another output path")


def check_free_space(folder: Path, needed_bytes: int, *, what: str) -> None:
    """Refuse to start when the file system holding *folder* has less than *needed_bytes* free.

    Args:
        folder: Output folder (or a file in it); the nearest existing parent is measured.
        needed_bytes: Estimated size of the outputs.
        what: What will be written, for the message (e.g. ``"the class map"``).

    Raises:
        OutputError: If there is not enough space.
    """
    probe = nearest_existing(folder)
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return  # cannot tell: the write itself will report a full disk
    if free < needed_bytes:
        raise OutputError(
            f"not enough space for {what} in {probe}: about {needed_bytes / 2**20:.0f} MiB needed, "
            f"{free / 2**20:.0f} MiB free; free some space or choose another output folder"
        )


def _move_into_place(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    aux_tmp, aux_final = tmp.with_name(tmp.name + _AUX), final.with_name(final.name + _AUX)
    if aux_tmp.exists():
        # GDAL keeps some metadata in a PAM sidecar: it travels with its raster.
        os.replace(aux_tmp, aux_final)
    elif aux_final.exists():
        # A stale sidecar of the file just replaced would describe the old content.
        aux_final.unlink()


def _disk_full_target(exc: BaseException | None, planned: dict[Path, Path]) -> Path | None:
    """The output to name for a full disk (or exhausted quota) raised while writing *planned*, else None."""
    if not isinstance(exc, OSError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    name = Path(os.fsdecode(exc.filename)) if isinstance(exc.filename, str | bytes) else None
    if name is None:
        return next(iter(planned), Path("."))
    hidden = name.name.removesuffix(_AUX)
    for final in planned:
        # Its temporary or one of its scratch files: the user knows the final name, not the hidden one.
        if (
            name.parent == final.parent
            and hidden.startswith(f".{final.name}.")
            and hidden.endswith(PART_SUFFIX)
        ):
            return final
    return name


def _discard(tmp: Path) -> None:
    for p in (tmp, tmp.with_name(tmp.name + _AUX)):
        with contextlib.suppress(OSError):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()


@contextlib.contextmanager
def atomic_path(path: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside *path*; move it onto *path* only if the block succeeds.

    Missing parent folders are created. On an exception (or interrupt) the temporary file and its
    ``.aux.xml`` are removed and *path* is untouched.

    Args:
        path: The final output path.
        overwrite: Replace an existing *path*; when False an existing file is an error, raised before
            the block runs.

    Raises:
        OutputError: If *path* exists without *overwrite*, or the file system refuses the write (disk
            full, read-only, permission denied), as one line.
    """
    if not overwrite and path.exists():
        raise OutputError(f"{path} exists; pass --overwrite to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path, exc) from None
    tmp = temporary_path(path)
    try:
        yield tmp
        _move_into_place(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise output_error(path, exc) from None
    except BaseException:
        _discard(tmp)
        raise


def write_text(path: Path, text: str, *, overwrite: bool = True) -> None:
    """Write UTF-8 *text* to *path* atomically (see :func:`atomic_path`)."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write *data* to *path* atomically (see :func:`atomic_path`)."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)


class OutputSet:
    """Several outputs that appear together, or not at all.

    Reserve each output with :meth:`path`, write to the temporary it returns, and leave the ``with``
    block normally: every file is then renamed into place. If the block raises, every temporary is
    removed and no final path is touched. Existing outputs are refused up front unless *overwrite*.

    Example:
        >>> with OutputSet(overwrite=False) as outputs:  # doctest: +SKIP
        ...     write_onnx(outputs.path(folder / "model.fp32.onnx"))
        ...     write_report(outputs.path(folder / "model.parity.json"))

    Args:
        overwrite: Replace existing outputs.
    """

    def __init__(self, *, overwrite: bool = False) -> None:
        self.overwrite = overwrite
        self._planned: dict[Path, Path] = {}
        self._created: list[Path] = []
        self._committed = False

    def path(self, final: Path, *, overwrite: bool | None = None) -> Path:
        """Reserve *final* and return the temporary path to write it to.

        Args:
            final: The output path.
            overwrite: Replace an existing *final* (default: the set's *overwrite*).

        Raises:
            OutputError: If *final* exists without overwrite, or was reserved twice.
        """
        if final in self._planned:
            raise OutputError(f"{final} would be written twice by one command; give distinct names")
        check_destination(final, overwrite=self.overwrite if overwrite is None else overwrite)
        missing = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(final, exc) from None
        # Folders made for this set go again if it is abandoned (deepest first).
        self._created += [p for p in missing if p not in self._created]
        tmp = temporary_path(final)
        self._planned[final] = tmp
        return tmp

    def temporary(self, final: Path) -> Path:
        """Return the temporary path reserved for *final*.

        Raises:
            KeyError: If *final* was not reserved.
        """
        return self._planned[final]

    def discard(self, final: Path) -> None:
        """Drop a reserved output (e.g. a variant that failed its gate): it will not appear."""
        tmp = self._planned.pop(final, None)
        if tmp is not None:
            _discard(tmp)

    @property
    def finals(self) -> Sequence[Path]:
        """The outputs reserved so far, in order."""
        return tuple(self._planned)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            full = _disk_full_target(exc, self._planned)
            self.abort()
            if full is not None and exc is not None:
                # A full disk while writing the set is the user's to fix, whatever library hit it.
                raise output_error(full, exc) from None
            return
        self.commit()

    def commit(self) -> None:
        """Move every written temporary into place (called by a clean ``with`` exit).

        Raises:
            OutputError: If a reserved output was never written, or a rename fails (then nothing that
                was not yet renamed appears and the temporaries are removed).
        """
        if self._committed:
            return
        missing = [final for final, tmp in self._planned.items() if not tmp.exists()]
        if missing:
            self.abort()
            raise OutputError(f"{missing[0]} was reserved but never written; nothing was kept")
        done: list[Path] = []
        try:
            for final, tmp in self._planned.items():
                _move_into_place(tmp, final)
                done.append(final)
        except OSError as exc:
            self.abort()
            raise output_error(final, exc) from None
        self._committed = True

    def abort(self) -> None:
        """Remove every temporary and the folders made for them: no reserved output appears."""
        for tmp in self._planned.values():
            _discard(tmp)
        self._planned.clear()
        for folder in sorted(self._created, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: never a folder that holds anything else
        self._created.clear()


@contextlib.contextmanager
def atomic_folder(folder: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside *folder*; it becomes *folder* only if the block succeeds.

    With *overwrite*, an existing *folder* is replaced (it is moved aside first and deleted after the
    new one is in place, so a failure never leaves neither).

    Raises:
        OutputError: If *folder* exists and is not empty without *overwrite*, or on OS errors.
    """
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise OutputError(f"{folder} exists and is not empty; pass --overwrite to replace it")
    tmp = temporary_path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise output_error(folder, exc) from None
    try:
        yield tmp
        if folder.exists():
            old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise output_error(folder, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------- one job per output
def lock_path(path: Path) -> Path:
    """Return the lock file of output *path*: ``.NAME.lock`` in the same folder (hidden like temporaries)."""
    return path.with_name(f".{path.name}{LOCK_SUFFIX}")


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds an output's lock, as its lock file records it.

    Attributes:
        pid: Process id of the holder (on *host*), or None when the file does not say (yet).
        host: Host name of the holder.
        since: When the holder took the lock (ISO 8601, local time with offset).
        command: The holder's command line.
    """

    pid: int | None
    host: str
    since: str
    command: str

    def describe(self) -> str:
        """``pid N on HOST since TIME``, for messages."""
        if self.pid is None:
            return "its lock file does not say which yet"
        return f"pid {self.pid} on {self.host} since {self.since}"

    def to_json(self) -> str:
        """The one-line JSON written into the lock file."""
        return json.dumps({"pid": self.pid, "host": self.host, "since": self.since, "command": self.command})

    @classmethod
    def from_text(cls, text: str) -> LockHolder:
        """Parse :meth:`to_json`'s output; an empty or partly written file gives an unknown holder."""
        try:
            data = json.loads(text)
            pid = data.get("pid")
            return cls(
                int(pid) if pid is not None else None,
                str(data.get("host", "?")),
                str(data.get("since", "?")),
                str(data.get("command", "")),
            )
        except (ValueError, TypeError, AttributeError):
            return cls(None, "?", "?", "")


def _busy_error(path: Path, holder: LockHolder) -> OutputError:
    return OutputError(
        f"{path} is being written by another flair-deploy job ({holder.describe()}); wait for it to "
        "finish or choose another --out"
    )


# Locks this process holds, by lock file. flock alone would tell two threads of one process apart
# (each open() is its own lock), but NFS emulates flock with POSIX locks, which belong to the whole
# process and are dropped when *any* descriptor of the file is closed: the process never opens a lock
# file it holds a second time.
_HELD: dict[str, LockHolder] = {}
_HELD_GUARD = threading.Lock()

#: Tries (and the pause between them) before a held lock is reported: a :func:`lock_holder` probe
#: holds a shared lock for a few microseconds, which must not turn a free output into a busy one.
_LOCK_TRIES = 5
_LOCK_RETRY_S = 0.05


def _held_key(lock_file: Path) -> str:
    return os.path.join(os.path.realpath(lock_file.parent), lock_file.name)


def _read_holder(fd: int) -> LockHolder:
    try:
        return LockHolder.from_text(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
    except OSError:
        return LockHolder(None, "?", "?", "")


def lock_holder(path: Path) -> LockHolder | None:
    """Return who holds *path*'s :class:`OutputLock` (this process included), or None when it is free.

    A lock file whose holder died is free: the operating system released its lock with the process.
    """
    lock_file = lock_path(path)
    with _HELD_GUARD:
        mine = _HELD.get(_held_key(lock_file))
    if mine is not None:
        return mine
    try:
        fd = os.open(lock_file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file (or none readable): nobody announced a claim
    try:
        try:
            # Shared: probes never exclude each other, only an exclusive holder excludes them.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        except OSError:
            return None  # the file system does not lock: nothing can be said
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_unlocked(path: Path) -> None:
    """Refuse up front an output that another job is writing (see :class:`OutputLock`).

    Raises:
        OutputError: If *path*'s lock is held, naming the holder.
    """
    holder = lock_holder(path)
    if holder is not None:
        raise _busy_error(path, holder)


class OutputLock:
    """Claim an output for one job while it is written: an exclusive, non-blocking ``flock``.

    The lock file ``.NAME.lock`` beside the output records the holder (pid, host, start time, command
    line) for the message a second job gets. Take the lock before the output's temporaries are created
    and release it after the rename; :func:`remove_stale_temporaries` leaves the temporaries of a held
    output alone.

    * A job that dies (killed, out of memory, node lost) never blocks its rerun: the operating system
      releases ``flock`` locks with the process, and a lock file nobody has locked is simply taken.
    * A clean release removes the lock file (while still holding the lock; a job that opened the old
      file meanwhile sees that its name now points elsewhere and tries again).
    * Jobs on *different nodes* exclude each other only on a file system whose locks reach every node:
      NFSv4 (Linux maps ``flock`` onto NFS byte-range locks), Lustre mounted with ``-o flock``, GPFS
      (Spectrum Scale). On NFSv3 without ``lockd``, or Lustre with ``localflock``, each node sees only
      its own locks; a file system that refuses locks altogether is reported as such.

    Example:
        >>> with OutputLock(out):  # doctest: +SKIP
        ...     write_map(out)

    Args:
        path: The output to claim (a file, or a folder written as one output).
        command: The command line to record (default: this process's ``sys.argv``).
    """

    def __init__(self, path: Path, *, command: str | None = None) -> None:
        self.path = path
        self.lock_file = lock_path(path)
        self.command = shlex.join(sys.argv) if command is None else command
        self._fd: int | None = None
        self._key = ""
        self._created: list[Path] = []

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock (creating missing parent folders, removed again on release if left empty).

        Raises:
            OutputError: If another job holds it (one line naming the holder), or the folder cannot
                be written, or its file system does not support locks.
            RuntimeError: If this object already holds the lock.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.lock_file} is already held by this lock")
        missing = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(self.path, exc) from None
        self._created = missing
        key = _held_key(self.lock_file)
        holder = LockHolder(
            os.getpid(),
            socket.gethostname(),
            dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            self.command,
        )
        # Reserved in this process before the file is opened: a second thread is refused here and
        # never opens (and closes) a descriptor of a lock file this process holds.
        with _HELD_GUARD:
            mine = _HELD.get(key)
            if mine is None:
                _HELD[key] = holder
        if mine is not None:
            self._remove_created()
            raise _busy_error(self.path, mine)
        try:
            fd = self._lock_file_descriptor()
        except BaseException:
            with _HELD_GUARD:
                _HELD.pop(key, None)
            self._remove_created()
            raise
        self._fd, self._key = fd, key
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (holder.to_json() + "\n").encode("utf-8"), 0)
        except OSError as exc:
            self.release()
            raise output_error(self.path, exc) from None

    def _lock_file_descriptor(self) -> int:
        """Open and exclusively lock the lock file; return its descriptor."""
        busy_tries = 0
        for _ in range(100):  # each pass that is not a busy lock saw a holder releasing: it ends
            try:
                fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise output_error(self.path, exc) from None  # the output's name: the lock is ours
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                busy_tries += 1
                if busy_tries >= _LOCK_TRIES:
                    raise _busy_error(self.path, holder) from None
                time.sleep(_LOCK_RETRY_S)
                continue
            except OSError as exc:
                os.close(fd)
                raise OutputError(
                    f"cannot lock {self.lock_file}: {exc.strerror or exc}; its file system does not "
                    "support flock (use a local disk, NFSv4, Lustre mounted with -o flock, or GPFS)"
                ) from None
            try:
                st, mine = os.stat(self.lock_file), os.fstat(fd)
                same = (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                return fd
            # The previous holder removed this file as it released it: lock the file at the name now.
            os.close(fd)
        raise OutputError(f"cannot lock {self.lock_file}: it keeps being replaced; check for a runaway job")

    def release(self) -> None:
        """Release the lock and remove its file (a no-op when not held)."""
        fd = self._fd
        if fd is None:
            return
        with contextlib.suppress(OSError):
            self.lock_file.unlink()  # while still locked: see the class docstring
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        self._fd = None
        with _HELD_GUARD:
            _HELD.pop(self._key, None)
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self._created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: the output, or anything else, keeps it
        self._created = []
