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


def plot_learning_curve(successes: Sequence[bool], path: str | Path, window: int, base_rate: float | None = None,
                        evals: Sequence[tuple[int, float]] = (), title: str = "success") -> Path:
    """Per-episode success (dots) and its moving average, with the base policy's level as a dashed line."""
    plt = _pyplot()
    s = np.asarray(successes, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(np.arange(len(s)), s, ".", ms=3, alpha=0.3, label="episode success")
    if len(s) >= 1:
        avg = np.array([s[max(0, i - window + 1): i + 1].mean() for i in range(len(s))])
        ax.plot(np.arange(len(s)), avg, lw=1.8, label=f"mean of last {window}")
    if evals:
        ax.plot(*zip(*evals), "o-", ms=4, lw=1.2, label="deterministic eval")
    if base_rate is not None:
        ax.axhline(base_rate, ls="--", color="gray", label=f"base policy ({base_rate:.0%})")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("episode")
    ax.set_ylabel("success")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
