"""Shared look of the accuracy plots written by the MNIST benchmarks (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def finish_accuracy_axes(ax: Any, title: str, dense: float, xlabel: str) -> None:
    """Dense baseline line, labels, limits, grid and legend of one model's panel."""
    ax.axhline(dense, color="0.4", lw=0.8, label=f"dense {dense:.4f}")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (no fine-tuning)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")


def save_figure(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
