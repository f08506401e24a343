"""numerics._xla_cpu (the small-loop threshold added to XLA_FLAGS) and
numerics._dispatch.as_one_kernel (a small eager program run as one XLA:CPU kernel)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numerics
from numerics._dispatch import as_one_kernel
from numerics._xla_cpu import SMALL_LOOP_BYTES, _with_threshold
from numerics.memory_maps import max_map_count, release_compiled_programs

_T = f"xla_cpu_small_while_loop_byte_threshold={SMALL_LOOP_BYTES}"


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("", f"--xla_backend_extra_options={_T}"),
        ("--xla_force_host_platform_device_count=2", f"--xla_force_host_platform_device_count=2 --xla_backend_extra_options={_T}"),
        ("--xla_backend_extra_options=a=1", f"--xla_backend_extra_options=a=1,{_T}"),
        ("--xla_backend_extra_options=", f"--xla_backend_extra_options={_T}"),
        # the rest of the string is kept as it is, quotes and all
        ('--xla_dump_to="/tmp/a b" --xla_backend_extra_options=a=1 --xla_dump_hlo_as_text',
         f'--xla_dump_to="/tmp/a b" --xla_backend_extra_options=a=1,{_T} --xla_dump_hlo_as_text'),
        ('--xla_dump_to="/tmp/a b"', f'--xla_dump_to="/tmp/a b" --xla_backend_extra_options={_T}'),
        # a threshold the user chose is kept as it is
        ("--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=7",
         "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=7"),
    ],
)
def test_threshold_added_to_xla_flags(flags, expected):
    assert _with_threshold(flags, SMALL_LOOP_BYTES) == expected


def _program(arrays):
    a, b = arrays
    return jnp.sin(a) @ b + jnp.sum(jnp.cos(b)), jnp.cumsum(a, axis=0)


@pytest.mark.parametrize("max_bytes", [0, SMALL_LOOP_BYTES])
def test_one_kernel_gives_the_direct_result(max_bytes):
    a = jnp.linspace(0.0, 1.0, 12).reshape(3, 4)
    b = jnp.linspace(-1.0, 2.0, 8).reshape(4, 2)
    f = jax.jit(lambda arrs: as_one_kernel(_program, arrs, arrs[0][0, 1] > 0, max_bytes=max_bytes))
    got, want = f((a, b)), _program((a, b))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-14, atol=1e-14)
    hlo = f.lower((a, b)).as_text()
    assert ("while" in hlo) == (max_bytes > 0)  # above max_bytes: called directly, no loop


def test_one_kernel_is_compiled_as_one_call_when_tuned():
    if not numerics.XLA_CPU_TUNED or jax.default_backend() != "cpu":
        pytest.skip("the XLA:CPU small-loop threshold is not in effect in this process")
    a = jnp.linspace(0.0, 1.0, 12).reshape(3, 4)
    b = jnp.linspace(-1.0, 2.0, 8).reshape(4, 2)
    f = jax.jit(lambda arrs: as_one_kernel(_program, arrs, arrs[0][0, 1] > 0, max_bytes=SMALL_LOOP_BYTES))
    # XLA's hoisting pass marks the loop it compiles as one kernel with this attribute
    assert "xla_cpu_small_call" in f.lower((a, b)).compile().as_text()


def test_mixture_solve_options_reach_the_compiled_program():
    """The exact mixture score's XLA options (YNNPACK for dots only) are accepted by this jaxlib and
    used for its likelihood solve; a score without them gets none."""
    from numerics import likelihood as lik

    sde = numerics.VPSDE()
    mix = numerics.GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [np.eye(2), 0.5 * np.eye(2)])
    opts = lik._compiler_options(mix.score_fn(sde))
    assert opts == numerics.MixtureScore.xla_compiler_options
    assert lik._compiler_options(lambda x, t: -x) is None
    assert not lik._compiler_options_supported((("xla_no_such_option_anywhere", "1"),))


def test_released_programs_give_back_their_memory_maps(memory_maps):
    """What numerics.memory_maps's guard (tests/conftest.py, checks, figures) relies on: each compiled XLA:CPU program holds memory maps
    (~12) until ``jax.clear_caches()`` drops JAX's references to it. Without the release, a thorough
    run reached vm.max_map_count and XLA segfaulted in its next compile."""
    if memory_maps is None:
        pytest.skip("no /proc/self/maps on this system")
    import gc

    jax.clear_caches()
    gc.collect()
    before = memory_maps()
    f = jax.jit(lambda a: jnp.sin(a) * 2.0 + jnp.sum(a))
    for n in range(1, 61):  # 60 programs: one per shape
        f(jnp.ones(n)).block_until_ready()
    grown = memory_maps() - before
    assert grown >= 3 * 60, f"60 compiled programs added only {grown} memory maps"
    # the guard (numerics.memory_maps) leaves the programs alone below its threshold ...
    if memory_maps() < 0.99 * max_map_count():
        assert not release_compiled_programs(fraction=0.99)
        assert memory_maps() - before >= grown - 10
    # ... and releases them above it (any process holds more than 1e-9 of the limit)
    assert release_compiled_programs(fraction=1e-9)
    gc.collect()
    left = memory_maps() - before
    assert left < grown / 4, f"after the release {left} of {grown} new memory maps remain"
    with pytest.raises(ValueError, match="fraction must lie in"):
        release_compiled_programs(fraction=1.5)


@pytest.mark.parametrize("tuning, flags, expected", [
    (None, "--xla_force_host_platform_device_count=1",
     f"--xla_force_host_platform_device_count=1 --xla_backend_extra_options={_T}"),
    ("0", "--xla_force_host_platform_device_count=1", "--xla_force_host_platform_device_count=1"),
])
def test_import_tunes_xla_flags_unless_opted_out(tuning, flags, expected):
    """A fresh process: ``import numerics`` adds the threshold to XLA_FLAGS before JAX's backend exists
    (XLA_CPU_TUNED), and with NUMERICS_XLA_CPU_TUNING=0 leaves XLA_FLAGS as the user set it."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NUMERICS_XLA_CPU_TUNING"}
    env.update(XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    if tuning is not None:
        env["NUMERICS_XLA_CPU_TUNING"] = tuning
    code = ("import json, os, numerics, jax.numpy as jnp; jnp.ones(2).sum().block_until_ready(); "
            "print(json.dumps([os.environ['XLA_FLAGS'], numerics.XLA_CPU_TUNED]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got_flags, tuned = json.loads(out.stdout.strip().splitlines()[-1])
    assert got_flags == expected and tuned == (tuning is None)
