"""Shared plumbing of the figure modules: the run context, saving, and a common style."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["Context", "FigureOutput", "plt", "reduced_ema", "style"]


@dataclasses.dataclass
class FigureOutput:
    """What a figure module returns: its files, a short numeric summary, and report lines.

    ``caption``: the module's ``CAPTION`` with its ``{fields}`` filled in from the sizes this run
    used (``CAPTION.format(...)``); None = ``CAPTION`` as it stands."""

    files: list[Path]
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    report_lines: list[str] = dataclasses.field(default_factory=list)
    caption: str | None = None


@dataclasses.dataclass
class Context:
    """Settings shared by every figure.

    Attributes:
        out: output folder.
        reduced: True for the small sizes used by the test suite (seconds per figure).
        seed: base random seed; each figure derives its own keys from it.
        workdir: a training work directory for the figures that read one (figure 8); None = the
            figure trains its own small run.
    """

    out: Path
    reduced: bool = False
    seed: int = 0
    workdir: Path | None = None
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)

    def size(self, full: int, reduced: int) -> int:
        return reduced if self.reduced else full

    def save(self, fig, name: str) -> list[Path]:
        """Save ``fig`` as NAME.png (150 dpi) and NAME.pdf in the output folder; close it."""
        self.out.mkdir(parents=True, exist_ok=True)
        paths = [self.out / f"{name}.png", self.out / f"{name}.pdf"]
        fig.savefig(paths[0], dpi=150, bbox_inches="tight")
        fig.savefig(paths[1], bbox_inches="tight")
        plt.close(fig)
        return paths


def reduced_ema(ctx: Context, steps: int) -> list[str]:
    """Config overrides for a training run of ``steps`` steps made by a figure: none at full size; in
    reduced mode an EMA rate r with r^steps ≤ 1e-3. The EMA starts at the random initial weights
    (training.train, no bias correction), so at the presets' rates (0.995) a run of 60–150 steps
    would be evaluated mostly at its initialisation (0.995^60 ≈ 74 %)."""
    if not ctx.reduced:
        return []
    rate = math.floor(1000 * 1e-3 ** (1.0 / steps)) / 1000
    return [f"optim.ema_rate={rate:.3f}"]


def style() -> None:
    """One readable style for all figures."""
    plt.rcParams.update(
        {
            "figure.figsize": (6.4, 4.2),
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
            "font.size": 10,
        }
    )
