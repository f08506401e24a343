"""numerics._dispatch.leaf_jit: equinox.filter_jit's split of arguments with a cheaper dispatch."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numerics._dispatch import leaf_jit


class _Affine(eqx.Module):
    scale: jax.Array
    name: str = eqx.field(static=True)


def test_arrays_traced_other_leaves_static():
    traces = []

    @leaf_jit
    def f(model, x, power, table):
        traces.append(1)  # runs only while tracing
        return model.scale * x**power + table

    m1, m2 = _Affine(jnp.asarray(2.0), "a"), _Affine(jnp.asarray(3.0), "a")
    x = jnp.arange(3.0)
    np.testing.assert_allclose(f(m1, x, 2, np.ones(3)), 2.0 * np.arange(3.0) ** 2 + 1)
    # new array values (jax and numpy) of the same shapes: same trace
    np.testing.assert_allclose(f(m2, x + 1, 2, np.zeros(3)), 3.0 * (np.arange(3.0) + 1) ** 2)
    assert len(traces) == 1
    # a changed static leaf (the int), a changed static field, a new shape: each traces anew
    np.testing.assert_allclose(f(m1, x, 3, np.zeros(3)), 2.0 * np.arange(3.0) ** 3)
    f(_Affine(jnp.asarray(2.0), "b"), x, 2, np.zeros(3))
    f(m1, jnp.arange(4.0), 2, np.zeros(4))
    assert len(traces) == 4


def test_inside_jit_and_grad():
    f = leaf_jit(lambda m, x: jnp.sum(m.scale * x**2))
    m = _Affine(jnp.asarray(1.5), "a")
    g = jax.jit(jax.grad(lambda x: f(m, x)))(jnp.arange(3.0))
    np.testing.assert_allclose(g, 3.0 * np.arange(3.0))


def test_unhashable_static_leaf_raises_and_cache_is_bounded():
    class Unhashable:
        __hash__ = None

    traces = []

    def scale(u, x):
        traces.append(u)  # runs only while tracing
        return x * u

    f = leaf_jit(scale, max_entries=2)
    with pytest.raises(TypeError, match="cannot be hashed .*Unhashable"):
        f(Unhashable(), jnp.ones(2))
    for k in (0.0, 1.0, 2.0, 2.0, 1.0):  # two entries kept: 2.0 and 1.0 are hits
        np.testing.assert_allclose(f(k, jnp.ones(2)), [k, k])
    assert traces == [0.0, 1.0, 2.0]
    np.testing.assert_allclose(f(0.0, jnp.ones(2)), [0.0, 0.0])  # 0.0 was evicted: traced again
    assert traces == [0.0, 1.0, 2.0, 0.0]
    f(1, jnp.ones(2))  # an int is another static value than the float 1.0 (different trace)
    assert traces[-1] == 1 and type(traces[-1]) is int


def test_compiler_options_chosen_once_per_entry():
    calls = []

    def options(model, x):
        calls.append(type(model).__name__)
        return {"xla_cpu_enable_fast_math": False}

    f = leaf_jit(lambda m, x: m.scale * x, compiler_options=options)
    m = _Affine(jnp.asarray(2.0), "a")
    np.testing.assert_allclose(f(m, jnp.arange(3.0)), 2.0 * np.arange(3.0))
    f(_Affine(jnp.asarray(3.0), "a"), jnp.arange(3.0))
    assert calls == ["_Affine"]  # a new array value reuses the entry and its options
    f(_Affine(jnp.asarray(3.0), "b"), jnp.arange(3.0))
    assert len(calls) == 2
    # nested in a jit or grad, JAX refuses compiler options: that entry gets none
    np.testing.assert_allclose(jax.jit(lambda x: f(m, x))(jnp.arange(3.0)), 2.0 * np.arange(3.0))
    assert jax.grad(lambda s: jnp.sum(f(_Affine(s, "a"), jnp.arange(3.0))))(jnp.asarray(2.0)) == 3.0
    assert len(calls) == 2


def test_traced_kwarg_tells_fn_whether_it_is_inside_a_trace():
    seen = []

    @functools.partial(leaf_jit, traced_kwarg="traced")
    def f(m, x, *, traced):
        seen.append(traced)
        return m.scale * x

    m = _Affine(jnp.asarray(2.0), "a")
    f(m, jnp.arange(3.0))
    jax.grad(lambda s: jnp.sum(f(_Affine(s, "a"), jnp.arange(3.0))))(jnp.asarray(2.0))  # eager grad: traced
    assert seen == [False, True]  # appended while tracing
    np.testing.assert_allclose(jax.jit(lambda x: f(m, x))(jnp.arange(3.0)), 2.0 * np.arange(3.0))
    assert seen[-1] is True


def test_nan_static_leaf_hits_the_cache():
    """A float NaN static leaf (NaN != NaN) is one cache entry, not a new trace on every call."""
    traces = []

    @leaf_jit
    def f(fill, x):
        traces.append(1)  # runs only while tracing
        return jnp.where(jnp.isnan(x), fill, x)

    x = jnp.asarray([1.0, jnp.nan])
    for _ in range(3):
        out = f(float("nan"), x)
    assert len(traces) == 1
    out = np.asarray(out)
    assert out[0] == 1.0 and np.isnan(out[1])
    np.testing.assert_array_equal(np.asarray(f(0.0, x)), [1.0, 0.0])
    assert len(traces) == 2
