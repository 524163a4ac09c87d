"""PNG plots for people reading results (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(losses: Sequence[float], path: str | Path, title: str = "loss", smooth: int = 50) -> Path:
    plt = _pyplot()
    losses = np.asarray(losses, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(losses, alpha=0.3, lw=0.8, label="per step")
    if len(losses) >= smooth:
        ax.plot(np.arange(smooth - 1, len(losses)), np.convolve(losses, np.ones(smooth) / smooth, "valid"),
                lw=1.5, label=f"mean of {smooth}")
    ax.set_yscale("log")
    ax.set_xlabel("gradient step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
