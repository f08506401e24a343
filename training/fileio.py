"""File helpers shared by the training tools, so that a kill (or a full disk) at any moment loses
nothing already written:

* :func:`write_atomic` — replace a small file (``config.json``, a summary, a rewritten metrics file)
  through a temporary file in the same directory and ``os.replace``: a reader, or the next start,
  finds the old or the new content, never a truncated one.
* JSON-lines files (``metrics.jsonl``, the evaluation's per-batch files) are appended one record per
  line; a record counts once its newline is written. A kill or a full disk can leave the LAST line
  cut short: :func:`drop_partial_last_line` removes it before appending again, and
  :func:`read_json_lines` leaves it out, while a malformed line elsewhere is damage and raises a
  ``ValueError`` naming the file and the line.
* :func:`read_json` — the one reader of a whole-file JSON document (a work directory's
  ``config.json``, the dequantiser's ``config.json``): an unreadable, empty, cut-off or non-UTF-8
  file raises an error (of the caller's type) naming the file, the cause and the fix.
* :func:`lock_directory` — an advisory, non-blocking lock (``fcntl.flock``) on a file in a work
  directory, held while one writer (a trainer, a dequantiser run) works there; the operating system
  releases it when the process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
from collections.abc import Iterator

try:
    import fcntl
except ImportError:  # not on Windows: no lock there (see lock_directory)
    fcntl = None

__all__ = ["write_atomic", "fsync_file", "fsync_dir", "complete_lines_end", "drop_partial_last_line", "read_json_lines",
           "read_json", "DirectoryBusyError", "lock_directory"]


def fsync_file(path: str | os.PathLike) -> None:
    """Flush the file ``path`` (written and closed by other code, e.g. a serialiser) to disk."""
    with open(os.fspath(path), "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new file in directory ``path`` durable (best effort; not every system can)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace the file ``path`` by ``text``: written to ``<path>.tmp-<pid>`` in the same directory,
    flushed and fsynced, then renamed over ``path`` (``os.replace``). On any failure (a full disk, a
    kill) ``path`` keeps its previous content; the temporary file is removed when the process can."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def complete_lines_end(data: bytes) -> int:
    """The length of the complete lines of ``data``: everything after its last newline is a line cut
    short by a kill or a full disk mid-write."""
    return len(data) if not data or data.endswith(b"\n") else data.rfind(b"\n") + 1


def drop_partial_last_line(path: str | os.PathLike) -> bool:
    """Truncate a JSON-lines file to its complete lines (see :func:`complete_lines_end`), so that the
    next append starts a line of its own; True if something was cut. A missing file is left alone."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return False
    with open(path, "rb+") as f:
        data = f.read()
        end = complete_lines_end(data)
        if end == len(data):
            return False
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    return True


def read_json_lines(path: str | os.PathLike, *, fix: str) -> list[dict]:
    """The JSON-object records of a JSON-lines file, in order. A last line cut short (no newline at
    its end) is left out; any other line that is not a JSON object raises a ``ValueError`` naming the
    file and the line number, followed by ``fix`` (what the user should do)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    records = []
    for n, line in enumerate(data[: complete_lines_end(data)].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{path}, line {n}: not a JSON record ({e}); {fix}") from e
        if not isinstance(rec, dict):
            raise ValueError(f"{path}, line {n}: expected a JSON object, got {type(rec).__name__}; {fix}")
        records.append(rec)
    return records


def read_json(path: str | os.PathLike, *, fix: str, error: type[Exception] = ValueError):
    """The JSON document in the file ``path``. A file that cannot be read (no access, a folder) or is
    not JSON (empty, cut off by a kill or a full disk, not UTF-8) raises ``error`` with the message
    ``"<path> cannot be read as JSON (<cause>); <fix>"``; ``fix`` says what the user should do."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (ValueError, OSError) as e:  # JSONDecodeError, UnicodeDecodeError, PermissionError, ...
        raise error(f"{path} cannot be read as JSON ({type(e).__name__}: {e}); {fix}") from e


class DirectoryBusyError(RuntimeError):
    """Another process holds the lock of a work directory (:func:`lock_directory`)."""


_held: set[tuple[str, int]] = set()  # (lock file, thread) pairs held here (lock_directory is re-entrant per thread)
_held_guard = threading.Lock()


def _try_flock(fd: int) -> bool | None:
    """Take the exclusive lock of the open file ``fd`` without waiting: True if taken, False if
    another process holds it, None if the file system cannot lock (e.g. ENOLCK, EOPNOTSUPP)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        return False if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK) else None
    return True


def _holder_of(fd: int) -> str:
    """What the lock file says about its holder ("pid 123 on host h: what"), or "" if it says nothing."""
    with contextlib.suppress(OSError):
        return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    return ""


@contextlib.contextmanager
def lock_directory(directory: str | os.PathLike, name: str, *, what: str, fix: str) -> Iterator[str | None]:
    """Hold an exclusive advisory lock on ``<directory>/<name>`` (``fcntl.flock``, non-blocking) while
    the block runs; yields the lock file's path (None where no lock could be taken, see below).

    The lock file records its holder ("pid N on host H: ``what``"). If another process holds the
    lock, :class:`DirectoryBusyError` names the directory, that holder and ``fix``. The lock belongs
    to the open file, so the operating system releases it when the process ends, even by SIGKILL;
    the file itself stays (deleting it would let two processes lock two different files). Re-entrant
    within one thread: a nested ``lock_directory`` of the same file (a save inside a locked run)
    passes; another thread of the same process is refused like another process (two ``train()`` calls
    in threads on one work directory). Where there is no ``fcntl`` (Windows), or the file system
    cannot ``flock``, the block runs without a lock."""
    path = os.path.join(os.path.abspath(os.fspath(directory)), name)
    key = (os.path.realpath(path), threading.get_ident())
    with _held_guard:
        nested = key in _held
    if nested or fcntl is None:
        yield path if nested else None
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        taken = _try_flock(fd)
        if taken is False:
            holder = _holder_of(fd) or "its holder did not record itself"
            by = "another thread of this process" if holder.startswith(f"pid {os.getpid()} ") else "another process"
            raise DirectoryBusyError(f"{os.path.dirname(path)} is in use by {by} ({holder}; lock file {path}); {fix}")
        if taken:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}: {what}\n".encode(), 0)
            with _held_guard:
                _held.add(key)
        try:
            yield path if taken else None
        finally:
            with _held_guard:
                _held.discard(key)
    finally:
        os.close(fd)  # releases the lock

