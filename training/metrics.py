"""Metrics as JSON lines (``<workdir>/metrics.jsonl``), one record per logging step, and
:func:`all_finite`, the on-device finiteness metric the training loops check before they save."""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

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
        """Append to ``path``; with ``truncate_after`` first drop records of steps > it (on resume)."""
        self.path, self.enabled = os.fspath(path), enabled
        if enabled and truncate_after is not None and os.path.exists(self.path):
            keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= truncate_after]
            with open(self.path, "w") as f:
                for r in keep:
                    f.write(json.dumps(r) + "\n")

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        rec = {k: (_clean(v) if not isinstance(v, (str, int, bool)) else v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
