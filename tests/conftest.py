"""Shared test configuration.

Hypothesis profiles: ``ci`` (the default, fast) and ``thorough`` (many more examples), chosen by
the environment variable ``WORKBENCH_HYPOTHESIS_PROFILE=thorough``. jaxtyping runtime checking of
the project's packages is switched on by ``--jaxtyping-packages`` in pyproject.toml.

Compiled programs are released (``jax.clear_caches()``) after any test that leaves the process with
more than a fifth of the kernel's limit of memory mappings (:mod:`numerics.memory_maps`): each
XLA:CPU executable maps ~12 regions and JAX keeps every one it compiled, so a worker of the thorough
profile (thousands of programs of random shapes) reached ``vm.max_map_count`` (65 530) and XLA
segfaulted in its next compile (docs/STACK_NOTES.md, pitfall 8).
"""

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Compiling is most of the suite's time (thousands of small programs of random shapes). Two of its
# costliest stages are cut here, before any JAX backend exists, for this process, its xdist workers and
# the subprocesses the tests start (they inherit the environment; tests/subprocess_env.py): LLVM's
# optimisation level (1 instead of 3) and XLA:CPU's MLIR fusion emitters (the classic emitters compile
# the same HLO faster). Measured on the 2-core host, whole suite: 17 min 4 s → 12 min 35 s (level 0:
# 12 min 6 s, but training-heavy tests run slower). Neither changes what is computed (no fast-math
# either way), only the machine code, so results can differ from a default run in the last bits:
# WORKBENCH_TEST_XLA_DEFAULTS=1 tests with XLA's own defaults. A flag already in XLA_FLAGS is kept.
TEST_XLA_FLAGS = {"--xla_backend_optimization_level": "1", "--xla_cpu_use_fusion_emitters": "false"}


def _xla_accepts(flags: str) -> bool:
    """Whether this jaxlib's XLA knows ``flags`` (it aborts the process on an unknown one, silently under
    pytest's capture): tried once in a short subprocess by the process that sets them."""
    import subprocess

    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    probe = subprocess.run([sys.executable, "-c", "import jax.numpy as j; j.zeros(1).block_until_ready()"],
                           env=env, capture_output=True, timeout=120)
    return probe.returncode == 0


if (os.environ.get("WORKBENCH_TEST_XLA_DEFAULTS", "0").strip().lower() in ("", "0", "false", "no", "off")
        and "PYTEST_XDIST_WORKER" not in os.environ):  # workers inherit the controller's choice
    _flags = os.environ.get("XLA_FLAGS", "")
    _with = " ".join([_flags] + [f"{k}={v}" for k, v in TEST_XLA_FLAGS.items() if k not in _flags]).strip()
    if _with != _flags and _xla_accepts(_with):
        os.environ["XLA_FLAGS"] = _with

import jax
import pytest
from hypothesis import HealthCheck, settings

from numerics.memory_maps import count_memory_maps, release_compiled_programs

jax.config.update("jax_enable_x64", True)

settings.register_profile(
    "ci",
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = os.environ.get("WORKBENCH_HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
THOROUGH_TIMEOUT_FACTOR = 20  # 200 examples instead of 10: the per-test timeouts grow with them

XLA_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    """One XLA compilation cache per test run, shared by the xdist workers and the subprocesses the
    tests start (they inherit the environment), so a program that several tests or processes compile
    (a training step, a report's solve) is compiled once: compiling is most of the suite's time.

    The run that creates the folder removes it at the end, so every run starts empty and tests
    nothing cached by another version of the code; a folder already named by ``JAX_COMPILATION_CACHE_DIR``
    is used and left as it is. Workers of xdist find the folder in the environment."""
    if not os.environ.get(XLA_CACHE_ENV):
        os.environ[XLA_CACHE_ENV] = tempfile.mkdtemp(prefix="workbench-xla-cache-")
        config._workbench_xla_cache = os.environ[XLA_CACHE_ENV]
    # cache every program, however quick to compile or small (JAX's defaults skip those under 1 s)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    jax.config.update("jax_compilation_cache_dir", os.environ[XLA_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                      int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


def pytest_unconfigure(config):
    owned = getattr(config, "_workbench_xla_cache", None)
    if owned is not None:
        shutil.rmtree(owned, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Under the thorough profile, each test's timeout (pyproject's 300 s, or its own mark) is
    multiplied by ``THOROUGH_TIMEOUT_FACTOR``: 20× the examples take ~20× as long."""
    if PROFILE != "thorough":
        return
    default = float(config.getini("timeout") or 0)
    for item in items:
        mark = item.get_closest_marker("timeout")
        base = float(mark.args[0]) if mark is not None and mark.args else default
        if base > 0:
            item.add_marker(pytest.mark.timeout(base * THOROUGH_TIMEOUT_FACTOR), append=False)


@pytest.fixture(autouse=True)
def _release_compiled_programs(request):
    """After each test, drop JAX's compiled programs if the process holds more than a fifth of the
    limit of memory maps (:func:`numerics.memory_maps.release_compiled_programs`, which also warns
    when a test came within 30% of the limit: then split the test)."""
    yield
    release_compiled_programs(context=request.node.nodeid)


@pytest.fixture
def memory_maps():
    """The function that counts this process's memory mappings (None where there is no
    /proc/self/maps)."""
    return count_memory_maps if count_memory_maps() else None


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark(name)`` imports the script ``benchmarks/<name>.py`` as a module (the benchmarks
    are scripts, not a package the tests can import by name)."""

    def load(name: str):
        path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"benchmarks_{name}_under_test", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
        return module

    return load


def _fake_workdir(path, cfg_name: str, overrides, event_shape, scale: float = 0.05):
    """A training work directory as train() writes it (config.json, data.json + an orbax checkpoint at step 5),
    with perturbed EMA parameters so that the (zero-output at init) network's ε̂ is not identically 0.
    No training step is compiled."""
    import equinox as eqx
    import jax.numpy as jnp

    from training.checkpoint import Checkpointer
    from training.configs import config_to_json, get_config
    from training.data import make_stream
    from training.train import DATA_RECORD, _check_training_data, init_state

    path.mkdir(parents=True, exist_ok=True)
    cfg = get_config(cfg_name, [*overrides, "train.progress=false"])
    state, _, _, _ = init_state(cfg, event_shape)
    leaves, tdef = jax.tree.flatten(state.ema)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    ema = jax.tree.unflatten(tdef, [leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype)
                                    for leaf, k in zip(leaves, keys)])
    state = eqx.tree_at(lambda s: (s.step, s.ema), state, (jnp.asarray(5, jnp.int32), ema))
    ck = Checkpointer(path / "checkpoints", write=True, every=5)
    ck.save(5, state, force=True)
    ck.close()
    (path / "config.json").write_text(config_to_json(cfg))
    record = _check_training_data(str(path), make_stream(cfg.data, 8, 0), cfg, None)  # DIR/data.json
    (path / DATA_RECORD).write_text(json.dumps(record))
    return path


@pytest.fixture(scope="session")
def fake_workdir():
    """``fake_workdir(path, cfg_name, overrides, event_shape)``: a training work directory as train()
    leaves it, without training (shared by the dequantiser and fine-tuning tests)."""
    return _fake_workdir


@pytest.fixture
def without_jaxtyping():
    """The functions as they run outside the tests: jaxtyping's runtime checks (switched on for the
    tests by --jaxtyping-packages) would reject a bad shape, or a string outside a ``Literal``
    annotation, first, with an error of their own."""
    import jaxtyping

    old = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", old)
