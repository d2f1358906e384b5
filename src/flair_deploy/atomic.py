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
  overwrite, folder not writable, not enough space) so that minutes of work are not wasted.

Operating-system failures (disk full, read-only file system, permission denied) become one-line
:class:`~flair_deploy.errors.OutputError` messages naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from flair_deploy.errors import OutputError

__all__ = [
    "PART_SUFFIX",
    "OutputSet",
    "atomic_folder",
    "atomic_path",
    "check_destination",
    "check_free_space",
    "is_temporary",
    "nearest_existing",
    "output_error",
    "remove_stale_temporaries",
    "scratch_path",
    "temporary_path",
    "write_bytes",
    "write_text",
]

PART_SUFFIX = ".part"
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
    beside them. A temporary of a *running* process is kept: another job may be writing it right now.
    """
    removed: list[Path] = []
    prefix = f".{path.name}."
    folder = path.parent
    if not folder.is_dir():
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
            self.abort()
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
