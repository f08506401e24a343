"""Counting XLA backend compilations, shared by the benchmarks: a timed call that compiles is an error.

Importing this module registers one ``jax.monitoring`` listener for the whole process.
"""

import jax

_COMPILES = [0]


def _on_event(name: str, *args, **kwargs) -> None:
    if name == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


def compile_count() -> int:
    """XLA backend compilations so far in this process."""
    return _COMPILES[0]
