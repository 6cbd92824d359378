"""Reports of a VOC evaluation: the per-class AP table (Markdown) and the precision-recall curves (PNG).

The numbers come from :mod:`ssd_ros.evaluation.voc_metric`; this module only renders them, for evaluate.py, train.py's
validation and bag_eval.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ssd_ros.evaluation.voc_metric import VocEvaluation

__all__ = ["format_ap_table", "plot_pr_curves"]


def format_ap_table(result: VocEvaluation) -> str:
    """A Markdown table: a row per class (AP to 4 decimals, ground-truth count), then the mAP row.

    Classes without ground truth show ``n/a`` and are named under the table as left out of the mAP.
    """
    label = "11-point (VOC2007)" if result.metric == "11point" else "all-point (VOC2010+)"
    width = max([len("Class"), len("mAP")] + [len(c.name) for c in result.classes])
    lines = [f"| {'Class':<{width}} | AP     | Objects |", f"|{'-' * (width + 2)}|-------:|--------:|"]
    for c in result.classes:
        ap = "n/a   " if math.isnan(c.ap) else f"{c.ap:.4f}"
        lines.append(f"| {c.name:<{width}} | {ap} | {c.npos:>7} |")
    mean = "n/a   " if math.isnan(result.map) else f"{result.map:.4f}"
    lines.append(f"| {'mAP':<{width}} | {mean} | {sum(c.npos for c in result.classes):>7} |")
    lines.append("")
    lines.append(f"{label} AP at IoU > {result.iou_threshold:g} over {result.num_images} images.")
    if result.classes_without_ground_truth:
        lines.append(
            f"No ground truth (AP undefined, not in the mAP): {', '.join(result.classes_without_ground_truth)}."
        )
    return "\n".join(lines)


def plot_pr_curves(result: VocEvaluation, path: str | Path, *, columns: int = 5) -> Path:
    """Save a grid of precision-recall curves, one panel per class with its AP, as a PNG; returns the path."""
    # A bare Figure renders with Agg and leaves pyplot's global backend/state alone (no display needed).
    from matplotlib.figure import Figure

    path = Path(path)
    n = max(len(result.classes), 1)
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    figure = Figure(figsize=(3.2 * columns, 3.0 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[len(result.classes) :]:
        ax.axis("off")
    for ax, c in zip(axes.flat, result.classes):
        if c.has_ground_truth:
            # The raw curve (dots) and the precision envelope the AP integrates, drawn from recall 0.
            if len(c.precision):
                envelope = np.maximum.accumulate(c.precision[::-1])[::-1]
                ax.step(np.r_[0.0, c.recall], np.r_[envelope[0], envelope], where="pre", color="tab:blue")
                ax.plot(c.recall, c.precision, ".", color="tab:orange", markersize=2)
            ax.set_title(f"{c.name}: AP {c.ap:.4f}", fontsize=9)
        else:
            ax.set_title(f"{c.name}: no ground truth", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    mean = "n/a" if math.isnan(result.map) else f"{result.map:.4f}"
    figure.suptitle(f"Precision-recall ({result.metric}, IoU > {result.iou_threshold:g}), mAP {mean}")
    figure.supxlabel("recall")
    figure.supylabel("precision")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
