"""Checkpoints with orbax: periodic, atomic (written to a temporary directory, then renamed),
keep-N, asynchronous, and forced on SIGTERM and at the end of a run.

The saved item is a flat dict of the training state's array leaves (step, parameters, EMA
parameters, optimiser state) keyed by position; the tree structure comes from the config, which
is stored next to the checkpoints (``config.json``) and checked on ``--resume``.

A :class:`Checkpointer` opens its directory **read-only** unless ``write=True``: a reader (evaluation,
sampling, the dequantiser, ``train.init_from``, :func:`training.evaluate.checkpoint_steps`) neither
creates the directory nor removes orbax's unfinished ``<step>.orbax-checkpoint-tmp*`` folders, so it
can run while a trainer is writing a checkpoint there. Only the training loop opens for writing;
its start-up removes the temporary folders a killed run left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpointer"]


class _DropReadOnlyNotice(logging.Filter):
    """orbax logs a warning ("Given directory is read only") when a read-only manager opens; for a
    reader that is the intended mode, not something to warn about. Installed on the ``absl`` logger
    only while a reader opens (:func:`_quiet_read_only_notice`), so no other message is touched."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is read only" not in record.getMessage()


@contextlib.contextmanager
def _quiet_read_only_notice():
    logger, notice = logging.getLogger("absl"), _DropReadOnlyNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


class Checkpointer:
    """The checkpoints in ``directory``: read-only by default; ``write=True`` (the training loop only)
    creates the directory, cleans up unfinished temporary checkpoints, saves every ``every`` steps
    and keeps the latest ``keep``."""

    def __init__(self, directory: str | os.PathLike, *, write: bool = False, keep: int = 3, every: int = 1000):
        self.directory = os.path.abspath(os.fspath(directory))
        self.writable = bool(write)
        if self.writable:
            if int(keep) < 1 or int(every) < 1:
                raise ValueError(f"keep and every must be >= 1 (train.keep, train.ckpt_every); got keep={keep}, "
                                 f"every={every}.")
            options = ocp.CheckpointManagerOptions(
                max_to_keep=int(keep), save_interval_steps=int(every), create=True, cleanup_tmp_directories=True
            )
        else:
            options = ocp.CheckpointManagerOptions(
                read_only=True, create=False, cleanup_tmp_directories=False, save_interval_steps=0, max_to_keep=None
            )
        with contextlib.nullcontext() if self.writable else _quiet_read_only_notice():
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
        if not self.writable:
            raise PermissionError(f"the checkpoints in {self.directory} were opened read-only; open them with "
                                  "Checkpointer(directory, write=True) to save (only the training loop does).")
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
