"""``qclip-score --stream --timeline``: a PNG of a stream's per-window scores."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..stream import WindowResult


def plot_timeline(records: Iterable[dict | WindowResult], path: str | Path, threshold: float | None = None,
                  title: str | None = None) -> Path:
    """A PNG of the score of each window over media time: windows below ``threshold`` shaded, errors marked."""
    import matplotlib  # here, not at the top: only --timeline needs it, and it is slow to import

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = [dict(r) if isinstance(r, dict) else r.to_record() for r in records]  # records or WindowResults
    ok = [r for r in rows if r.get("score") is not None]
    bad = [r for r in rows if r.get("error")]
    fig, ax = plt.subplots(figsize=(10, 3.6), dpi=100)
    try:
        if ok:
            mid = [(r["start_s"] + r["end_s"]) / 2 for r in ok]
            ax.plot(mid, [r["score"] for r in ok], "-o", ms=3, lw=1.2, color="tab:blue", label="window score")
        alerts = [r for r in ok if r.get("alert") or (threshold is not None and r["score"] < threshold)]
        for i, r in enumerate(alerts):
            ax.axvspan(r["start_s"], r["end_s"], color="tab:red", alpha=0.12, lw=0, label="alert" if i == 0 else None)
        if alerts:
            ax.plot([(r["start_s"] + r["end_s"]) / 2 for r in alerts], [r["score"] for r in alerts], "o", ms=4, color="tab:red")
        if threshold is not None:
            ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:g}")
        for i, r in enumerate(bad):
            ax.axvline(r.get("start_s", 0.0), color="black", ls=":", lw=1,
                       label=f"error: {r['error'].get('code')}" if i == 0 else None)
        ax.set_xlabel("media time (s)")
        ax.set_ylabel("score")
        ax.set_title(title or "quality per window")
        ax.grid(alpha=0.3)
        if ok or bad or threshold is not None:
            ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
