"""Data parallelism with ``jax.sharding`` over every device of every host (no pmap).

One mesh axis, ``"data"``, spans ``jax.devices()`` (all local devices; all devices of all hosts
after :func:`maybe_initialize_distributed`). Parameters, optimiser state and EMA are replicated;
batches are split along their first axis. ``jit`` inserts the gradient all-reduce; the loss is a
mean over the global batch, so a sharded step computes the same numbers as a one-device step up
to floating-point summation order.
"""

from __future__ import annotations

import numpy as np
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["maybe_initialize_distributed", "make_mesh", "batch_sharding", "replicated", "host_to_global"]

DATA_AXIS = "data"


def maybe_initialize_distributed(cfg) -> None:
    """Call ``jax.distributed.initialize`` when ``cfg.enabled`` (a :class:`DistributedConfig`).

    Must run before any other jax call. With no coordinator address jax auto-detects the cluster
    (Cloud TPU pods, SLURM, Open MPI)."""
    if not cfg.enabled:
        return
    kwargs = {}
    if cfg.coordinator_address:
        kwargs = dict(
            coordinator_address=cfg.coordinator_address, num_processes=cfg.num_processes, process_id=cfg.process_id
        )
    jax.distributed.initialize(**kwargs)


def make_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def host_to_global(local: np.ndarray | None, mesh: Mesh, global_batch: int):
    """Assemble this host's rows into one global array sharded over the mesh (None passes through)."""
    if local is None:
        return None
    n_dev = mesh.devices.size
    if global_batch % n_dev:
        raise ValueError(f"global batch {global_batch} is not divisible by the {n_dev} devices of the mesh.")
    global_shape = (global_batch, *local.shape[1:])
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local, global_shape)
