"""Shared test configuration.

Hypothesis profiles: ``ci`` (the default, fast) and ``thorough`` (many more examples), chosen by
the environment variable ``WORKBENCH_HYPOTHESIS_PROFILE=thorough``. jaxtyping runtime checking of
the project's packages is switched on by ``--jaxtyping-packages`` in pyproject.toml.

Compiled programs are released (``jax.clear_caches()``) after any test that leaves the process with
more than a fifth of the kernel's limit of memory mappings: each XLA:CPU executable maps ~12 regions
and JAX keeps every one it compiled, so a worker of the thorough profile (thousands of programs of
random shapes) reached ``vm.max_map_count`` (65 530) and XLA segfaulted in its next compile
(docs/STACK_NOTES.md, pitfall 8).
"""

import importlib.util
import os
import sys
import warnings
from pathlib import Path

import jax
import pytest
from hypothesis import HealthCheck, settings

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


def _max_map_count() -> int:
    try:
        return int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):  # not Linux: no such limit to guard
        return 0


def _count_memory_maps() -> int:
    """Memory mappings of this process (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


# One thorough-profile test added ~28 000 maps on its own (200 examples, each compiling programs of
# new shapes), so the release comes early enough to leave room for such a test.
_MAPS_LIMIT = _max_map_count()
_MAPS_RELEASE_AT = _MAPS_LIMIT // 5


@pytest.fixture(autouse=True)
def _release_compiled_programs(request):
    """After each test, drop JAX's compiled programs if the process holds too many memory maps; warn
    when a test came within 30% of the limit (then lower the release point or split the test)."""
    yield
    if not _MAPS_RELEASE_AT:
        return
    maps = _count_memory_maps()
    if maps > 0.7 * _MAPS_LIMIT:
        warnings.warn(f"{request.node.nodeid} left {maps} memory maps (vm.max_map_count {_MAPS_LIMIT}); XLA "
                      "crashes at the limit: see docs/STACK_NOTES.md, pitfall 8", stacklevel=1)
    if maps > _MAPS_RELEASE_AT:
        jax.clear_caches()


@pytest.fixture
def memory_maps():
    """The function that counts this process's memory mappings (None where there is no
    /proc/self/maps)."""
    return _count_memory_maps if _count_memory_maps() else None


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
