"""Checkpoints with orbax: periodic, atomic (written to a temporary directory, then renamed),
keep-N, asynchronous, and forced on SIGTERM and at the end of a run.

The saved item is a flat dict of the training state's array leaves (step, parameters, EMA
parameters, optimiser state) keyed by position; the tree structure comes from the config, which
is stored next to the checkpoints (``config.json``) and checked on ``--resume``.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpointer"]


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, every: int = 1000):
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every, create=True, cleanup_tmp_directories=True
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options)

    @staticmethod
    def _flatten(state) -> dict:
        leaves = jax.tree.leaves(state)
        return {f"{i:05d}": leaf for i, leaf in enumerate(leaves)}

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def save(self, step: int, state, *, force: bool = False) -> bool:
        """Save ``state`` as checkpoint ``step`` if the interval says so (or ``force``)."""
        return self._mngr.save(step, args=ocp.args.StandardSave(self._flatten(state)), force=force)

    def restore(self, step: int | None, like):
        """Restore checkpoint ``step`` (latest if None) into the structure, dtypes and shardings of ``like``."""
        step = self._mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}.")
        leaves, treedef = jax.tree.flatten(like)
        abstract = {
            f"{i:05d}": jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding) for i, leaf in enumerate(leaves)
        }
        restored = self._mngr.restore(step, args=ocp.args.StandardRestore(abstract))
        return jax.tree.unflatten(treedef, [restored[f"{i:05d}"] for i in range(len(leaves))])

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()
