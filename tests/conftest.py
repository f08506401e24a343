"""Shared test configuration.

Hypothesis profiles: ``ci`` (the default, fast) and ``thorough`` (many more examples), chosen by
the environment variable ``WORKBENCH_HYPOTHESIS_PROFILE=thorough``. jaxtyping runtime checking of
the project's packages is switched on by ``--jaxtyping-packages`` in pyproject.toml.
"""

import os

import jax
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
