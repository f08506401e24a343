"""Metrics as JSON lines (``<workdir>/metrics.jsonl``), one record per logging step, and
:func:`all_finite`, the on-device finiteness metric the training loops check before they save.

A kill or a full disk can cut the last line short; it is left out when read and removed before the
next append (training.fileio). A resume drops the records of steps past its checkpoint by an
atomic rewrite, so a kill during it leaves the old file."""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from training.fileio import drop_partial_last_line, read_json_lines, write_atomic

__all__ = ["MetricsWriter", "read_metrics", "all_finite"]


def all_finite(tree: PyTree) -> Float[Array, ""]:
    """1.0 if every value of every array leaf of ``tree`` is finite, else 0.0 (float32; jit-friendly).
    Leaf by leaf, not through a norm: the norm of large but finite parameters overflows float32."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.ones((), jnp.float32)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])).astype(jnp.float32)


def _clean(v):
    v = float(v)
    return v if math.isfinite(v) else str(v)


class MetricsWriter:
    def __init__(self, path: str | os.PathLike, *, enabled: bool = True, truncate_after: int | None = None):
        """Append to ``path``; first drop a last line cut short by a kill or a full disk, and with
        ``truncate_after`` (on resume) the records of steps > it (an atomic rewrite, only if any)."""
        self.path, self.enabled = os.fspath(path), enabled
        if enabled and os.path.exists(self.path):
            drop_partial_last_line(self.path)
            if truncate_after is not None:
                records = read_metrics(self.path)
                keep = [r for r in records if r.get("step", 0) <= truncate_after]
                if len(keep) < len(records):
                    write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        rec = {k: (_clean(v) if not isinstance(v, (str, int, bool)) else v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics file; a last line cut short (a kill or a full disk mid-write) is left
    out, a malformed line elsewhere raises a ``ValueError`` naming the file and the line."""
    return read_json_lines(path, fix="delete that line (its step's metrics are lost) or restore the file from a copy.")
