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
"""

from __future__ import annotations

import contextlib
import json
import os

__all__ = ["write_atomic", "fsync_dir", "complete_lines_end", "drop_partial_last_line", "read_json_lines"]


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
