"""Shared test configuration.

Hypothesis profiles: ``ci`` (the default, fast) and ``thorough`` (many more examples), chosen by
the environment variable ``WORKBENCH_HYPOTHESIS_PROFILE=thorough``. jaxtyping runtime checking of
the project's packages is switched on by ``--jaxtyping-packages`` in pyproject.toml.
"""

import importlib.util
import os
import sys
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
settings.load_profile(os.environ.get("WORKBENCH_HYPOTHESIS_PROFILE", "ci"))


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
