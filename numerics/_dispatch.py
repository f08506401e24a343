"""A cheaper dispatch for jitted functions of PyTrees that are called many times on small inputs.

:func:`equinox.filter_jit` traces every array leaf and treats every other leaf as static. Its
per-call cost on the host is dominated by ``eqx.partition`` (a Python ``tree_map``): about 70 µs
for the arguments of :func:`numerics.likelihood.ode_log_likelihood` with a mixture score, more than
the whole compiled solve of 8 points at a loose tolerance. :func:`leaf_jit` has the same semantics
with one ``jax.tree.flatten`` and a dictionary lookup (about 10 µs), then ``jax.jit``'s own C++
dispatch on the flat list of array leaves.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

__all__ = ["leaf_jit", "as_one_kernel"]

_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)  # equinox.is_array's notion of an array (tracers included)


_NAN = object()  # the cache key of a float NaN static leaf


def _rebuilt(fn: Callable, treedef, mask: tuple[bool, ...], static: tuple, arrays: list):
    it = iter(arrays)
    leaves = [next(it) if is_array else leaf for is_array, leaf in zip(mask, static)]
    return fn(*jax.tree.unflatten(treedef, leaves))


def _hashable(obj) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def leaf_jit(fn: Callable | None = None, *, max_entries: int = 64,
             compiler_options: Callable[..., dict | None] | None = None,
             traced_kwarg: str | None = None) -> Callable:
    """``jax.jit`` of ``fn`` over positional PyTree arguments with :func:`equinox.filter_jit`'s
    split: array leaves (jax, numpy, tracers) are traced, all other leaves are static and hashed.

    One compiled entry per (tree structure, static leaves); ``jax.jit`` then caches per shape and
    dtype, so another model or mixture of the same structure and shapes does not recompile. At most
    ``max_entries`` structures are kept (least recently used dropped). A static leaf that cannot be
    hashed raises ``TypeError`` (as in ``filter_jit``). ``fn`` must return a PyTree of arrays.
    ``compiler_options(*args)``, if given, is called once per new entry and returns XLA compiler
    options for it (``jax.jit``'s ``compiler_options``) or None; a call inside another trace (jit,
    grad, vmap: an argument is a tracer) gets none, as JAX takes them only on a top-level jit.
    ``traced_kwarg``, if given, names a keyword argument of ``fn`` that receives (statically) whether
    the call is inside another trace, so ``fn`` can choose a form that is only valid eagerly.
    """
    if fn is None:
        return functools.partial(leaf_jit, max_entries=max_entries, compiler_options=compiler_options,
                                 traced_kwarg=traced_kwarg)
    entries: OrderedDict = OrderedDict()

    @functools.wraps(fn)
    def wrapper(*args):
        leaves, treedef = jax.tree.flatten(args)
        mask = tuple(isinstance(leaf, _ARRAY_TYPES) for leaf in leaves)
        static = tuple(None if is_array else leaf for is_array, leaf in zip(mask, leaves))
        # types too (1 and 1.0 trace differently); and whether any argument is a tracer (inside jit,
        # grad or vmap), where JAX refuses compiler options and fn may need its traceable form
        traced = any(isinstance(leaf, jax.core.Tracer) for leaf, is_array in zip(leaves, mask) if is_array)
        # a float NaN is not equal to itself: keyed as a marker, or every call would miss the cache
        static_key = tuple(_NAN if leaf != leaf and isinstance(leaf, float) else leaf for leaf in static)
        key = (treedef, mask, static_key, tuple(map(type, static)), traced)
        try:
            jitted = entries.get(key)
        except TypeError as err:
            kinds = sorted({type(leaf).__name__ for leaf in static if leaf is not None and not _hashable(leaf)})
            raise TypeError(
                f"{fn.__name__}: a non-array leaf of the arguments cannot be hashed ({', '.join(kinds) or err}); "
                "every leaf that is not an array is a compile-time constant and must be hashable."
            ) from err
        if jitted is None:
            options = None if compiler_options is None or traced else compiler_options(*args)
            call = fn if traced_kwarg is None else functools.partial(fn, **{traced_kwarg: traced})
            jitted = entries[key] = jax.jit(functools.partial(_rebuilt, call, treedef, mask, static),
                                            compiler_options=options)
            if len(entries) > max_entries:
                entries.popitem(last=False)
        else:
            entries.move_to_end(key)
        return jitted([leaf for is_array, leaf in zip(mask, leaves) if is_array])

    wrapper.cache_clear = entries.clear  # type: ignore[attr-defined]
    return wrapper


def as_one_kernel(fn: Callable, arrays, run, *, max_bytes: int):
    """``fn(arrays)`` (inside a trace), run as the body of a ``while`` loop that runs exactly once,
    so that XLA:CPU compiles the whole program into one kernel when it touches fewer than
    ``max_bytes`` (its small-loop hoisting, :mod:`numerics._xla_cpu`): the set-up outside the
    solver's own loops no longer runs as ~40 separately dispatched operations (a one-step solve of 8
    points: 105–140 → ~90 µs, of which ~45 µs is PjRt's hand-off of the call to a worker thread).
    Larger inputs call ``fn`` directly.

    ``arrays`` (a PyTree of arrays) is carried through the loop behind an optimisation barrier, or
    XLA would hoist everything that depends only on the inputs back out of the loop. ``run`` is a
    boolean scalar that is True at run time but unknown to the compiler (a loop with a constant trip
    count of one is inlined away). A ``while`` loop has no reverse-mode derivative: use this only on
    the eager path, never under ``grad``.
    """
    nbytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(arrays))
    if nbytes > max_bytes:
        return fn(arrays)
    # Trace fn once (its output structure is needed for the loop's initial state), then replay the
    # jaxpr inside the loop instead of tracing fn's Python a second time.
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(arrays)
    out_leaves, out_tree = jax.tree.flatten(out_shape)
    init = [jnp.zeros(s.shape, s.dtype) for s in out_leaves]
    replay = jax.extend.core.jaxpr_as_fun(closed)

    def body(carry):
        _, arrs, _ = carry
        arrs = jax.lax.optimization_barrier(arrs)
        return jnp.bool_(True), arrs, replay(*jax.tree.leaves(arrs))

    out = jax.lax.while_loop(lambda c: run & ~c[0], body, (jnp.bool_(False), arrays, init))[2]
    return jax.tree.unflatten(out_tree, out)
