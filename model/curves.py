"""Training curves as a PNG next to the checkpoint (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

from model.files import atomic_write


def save_curves(history: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """One panel per metric (train loss/RMSE, validation RMSE/nDCG; ``rank_*`` = the ranking head) vs epoch.

    matplotlib is imported here, not with the module: its import (0.6 s) would delay every ``scripts/train.py``
    run that stops early (``--help``, a refused flag or file) by that much."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines; must precede pyplot
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list[float], list[float]]] = {}
    for row in history:
        prefix = "rank_" if "rank_epoch" in row else ""
        epoch = row.get(f"{prefix}epoch", 0.0)
        for key, value in row.items():
            if key.endswith("epoch"):
                continue
            xs, ys = series.setdefault(key, ([], []))
            xs.append(epoch)
            ys.append(value)
    fig, axes = plt.subplots(1, max(len(series), 1), figsize=(4 * max(len(series), 1), 3.2), squeeze=False)
    for ax, (key, (xs, ys)) in zip(axes[0], sorted(series.items())):
        ax.plot(xs, ys, marker=".")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))  # never a half-written file
    plt.close(fig)
    return path
