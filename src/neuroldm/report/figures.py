"""The two kinds of figure the report draws itself, as PNG bytes: real beside synthetic slices, training curves.

Every other figure in the report is a PNG a stage already wrote, embedded as it is.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from neuroldm.viz.slices import VIEWS, orthogonal_slices  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def real_vs_synthetic(rows: list[tuple[str, list[tuple[str, np.ndarray]]]], window: tuple[float, float]) -> bytes:
    """One figure row per class, each volume as its three orthogonal mid slices, all in one grey window.

    ``rows = [(class_name, [(column_title, volume (X, Y, Z) RAS), ...]), ...]``; `window` is ``(vmin, vmax)``,
    shared by real and synthetic volumes so their intensities compare directly.
    """
    n_cols = 3 * max(len(vols) for _, vols in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.25 * n_cols, 1.55 * len(rows) + 0.3), squeeze=False)
    for r, (label, vols) in enumerate(rows):
        for v, (name, volume) in enumerate(vols):
            for k, sl in enumerate(orthogonal_slices(volume)):
                ax = axes[r, 3 * v + k]
                ax.imshow(sl, origin="lower", cmap="gray", vmin=window[0], vmax=window[1])
                ax.set_title(f"{name}\n{VIEWS[k]}" if k == 1 else VIEWS[k], fontsize=6.5)
        axes[r, 0].set_ylabel(label, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.set_axis_off()
    fig.tight_layout()
    return _png(fig)


def training_curves(log: pd.DataFrame, title: str, max_panels: int = 4) -> bytes:
    """Training loss (with the validation loss when logged) and each other validation metric against step.

    `log` is an engine ``metrics.csv`` (`neuroldm.train.engine`): ``step``, ``loss``, other terms and ``val_*``
    columns, the validation ones filled only on validation steps.
    """
    panels: list[tuple[str, list[str]]] = [("loss", [c for c in ("loss", "val_loss") if c in log])]
    panels += [(c[len("val_"):], [c]) for c in log.columns
               if c.startswith("val_") and c not in ("val_loss", "val_selection")]
    panels = [p for p in panels if p[1]][:max_panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 2.7), squeeze=False)
    for ax, (name, columns) in zip(axes[0], panels, strict=True):
        for col in columns:
            part = log[["step", col]].apply(pd.to_numeric, errors="coerce").dropna()
            label = "validation" if col.startswith("val_") else "training"
            ax.plot(part["step"], part[col], marker="o" if len(part) < 30 else None, ms=3, lw=1.2, label=label)
        values = log[columns].apply(pd.to_numeric, errors="coerce").stack()
        if name == "loss" and len(values) and (values > 0).all():
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(columns) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)
