"""Keep a long-running process below the kernel's limit of memory mappings.

Each XLA:CPU executable holds ~12 memory mappings and JAX keeps every program it compiled (per
jitted function, per shape and static argument). Near Linux's ``vm.max_map_count`` (65 530 by
default) XLA's next compile crashes the process with SIGSEGV, whatever it compiles
(docs/STACK_NOTES.md, pitfall 8; a thorough-profile test worker got there after ~17 minutes of
hypothesis examples of random shapes). :func:`jax.clear_caches` gives the mappings back (measured:
1000 programs, 12 400 → 575 maps).

:func:`release_compiled_programs` is the guard: call it between units of work that compile programs
of new shapes (the test suite calls it after every test, :func:`numerics.checks.cases.run_all` after
every check, ``python -m paper_figures`` after every figure). It reads ``/proc/self/maps`` (about a
millisecond per 10 000 maps) and does nothing below its threshold or where the file does not exist.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import jax

__all__ = ["max_map_count", "count_memory_maps", "release_compiled_programs"]

RELEASE_FRACTION = 0.2  # one thorough-profile test added ~28 000 maps (~40% of the limit) on its own
WARN_FRACTION = 0.7


@functools.cache
def max_map_count() -> int:
    """The kernel's limit of memory mappings per process (``vm.max_map_count``); 0 where there is
    none to read (not Linux)."""
    try:
        return int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        return 0


def count_memory_maps() -> int:
    """Memory mappings of this process (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def release_compiled_programs(*, fraction: float = RELEASE_FRACTION, context: str = "") -> bool:
    """Drop JAX's compiled programs (:func:`jax.clear_caches`) if this process holds more than
    ``fraction`` of ``vm.max_map_count`` memory mappings; return whether it did.

    Above 70% of the limit it also warns (naming ``context``, e.g. the test or check that got
    there): the work between two calls compiled so many programs that the next such unit may crash
    before the guard runs; call it more often or lower ``fraction``. The programs are compiled anew
    when next needed, so only the compile time is lost.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1) (a share of vm.max_map_count); got {fraction!r}.")
    limit = max_map_count()
    if not limit:
        return False
    maps = count_memory_maps()
    if maps > WARN_FRACTION * limit:
        where = f"{context} left" if context else "this process holds"
        warnings.warn(f"{where} {maps} memory maps (vm.max_map_count {limit}); XLA crashes at the limit: "
                      "release compiled programs more often (docs/STACK_NOTES.md, pitfall 8)", stacklevel=2)
    if maps > fraction * limit:
        jax.clear_caches()
        return True
    return False
