"""The environment of the Python subprocesses the tests start (training and evaluation runs, a second
device count): this repository on the path, the CPU platform, and the test run's XLA flags
(tests/conftest.py sets them; results compared bitwise with the test process need the same code
generation), with the device count of the caller's choice in place of any inherited one."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def subprocess_env(devices: int | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    if devices is not None:
        flags.append(f"{DEVICE_COUNT_FLAG}={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    return env
