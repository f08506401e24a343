"""An XLA:CPU compiler setting that makes small compiled loops (an adaptive ODE solve of a few
hundred points, the shape of every check in :mod:`numerics`) 1.5–3× faster on CPU.

``xla_cpu_small_while_loop_byte_threshold`` (an XLA backend option, default 1024 bytes): a ``while``
loop whose body touches fewer bytes is compiled into ONE kernel instead of a sequence of
per-operation "thunks", each dispatched on its own (and handed between threads). Raised to
:data:`SMALL_LOOP_BYTES`, the 2-D mixture solve of 8–256 points runs 1.5–3× faster (measured in
``benchmarks/likelihood.py``); 1000 points and the 100-D case are above the threshold or call
libraries inside the loop and are unchanged. A network's forward pass inside a loop is far above it.

XLA reads its flags once, when JAX creates its backend, so :func:`tune` must run before the first
computation of the process; ``import numerics`` calls it (opt out with
``NUMERICS_XLA_CPU_TUNING=0``). A threshold the user already put in ``XLA_FLAGS`` is kept.

Not set here, measured: ``jax_cpu_enable_async_dispatch=False`` (run CPU computations on the calling
thread) saves another 40–70 µs per call on a 2-core VM, but it is a process-wide change of JAX's
dispatch that the host-driven baseline of the benchmark gains more from (3× per call) than we do.
"""

from __future__ import annotations

import os
import re

__all__ = ["SMALL_LOOP_BYTES", "tune"]

SMALL_LOOP_BYTES = 512 * 1024
_OPTION = "xla_cpu_small_while_loop_byte_threshold"
_EXTRA = "--xla_backend_extra_options="


def _with_threshold(flags: str, nbytes: int) -> str:
    """``flags`` (an XLA_FLAGS string) with the small-loop threshold added to its backend options.
    The rest of the string is kept byte for byte (quoted paths included)."""
    if _OPTION in flags:
        return flags
    entry = f"{_OPTION}={nbytes}"
    match = re.search(r"(?:^|\s)--xla_backend_extra_options=(\S*)", flags)
    if match is None:
        return f"{flags} {_EXTRA}{entry}".strip()
    rest = match.group(1)
    return flags[: match.start(1)] + (f"{rest},{entry}" if rest else entry) + flags[match.end(1):]


def _backends_initialized() -> bool:
    try:
        from jax._src.xla_bridge import backends_are_initialized
    except ImportError:  # pragma: no cover - a JAX without it: assume the worst
        return True
    return backends_are_initialized()


def tune(nbytes: int = SMALL_LOOP_BYTES) -> bool:
    """Add the small-loop threshold to ``XLA_FLAGS`` if JAX's backends are not created yet; returns
    whether it was added (False after the first JAX computation of the process). Idempotent."""
    if _backends_initialized():
        return False
    os.environ["XLA_FLAGS"] = _with_threshold(os.environ.get("XLA_FLAGS", ""), nbytes)
    return True
