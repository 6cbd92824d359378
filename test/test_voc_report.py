"""The VOC evaluation's reports: the Markdown AP table and the precision-recall PNG."""

from __future__ import annotations

import re

import numpy as np
from test_voc_metric import NOWHERE, A, B, dets, gt, random_problem, to_ours

from ssd_ros.evaluation.voc_metric import evaluate_detections
from ssd_ros.evaluation.voc_report import format_ap_table, plot_pr_curves


def test_format_ap_table_rows_and_map():
    truth = [gt([A, B], ["cat", "Stop Sign"]), gt([A], ["cat"])]
    found = [dets([A, NOWHERE, B], [0.9, 0.8, 0.7], ["cat", "cat", "Stop Sign"]), dets()]
    result = evaluate_detections(found, truth, ["cat", "Stop Sign", "dog"])
    table = format_ap_table(result)
    lines = table.splitlines()
    assert lines[0].startswith("| Class") and set(lines[1]) <= {"|", "-", ":"}
    rows = {m[1].strip(): m[2] for m in (re.match(r"\| (.+?) \| (\S+) +\|", line) for line in lines[2:6]) if m}
    # cat: TP at 0.9 then FP, 2 objects -> precision 1 up to recall 1/2 -> 6/11 = 0.5455.
    assert rows == {"cat": f"{6 / 11:.4f}", "Stop Sign": "1.0000", "dog": "n/a", "mAP": f"{(6 / 11 + 1) / 2:.4f}"}
    assert "dog" in lines[-1] and "not in the mAP" in lines[-1]
    assert "11-point" in table and "IoU > 0.5" in table


def test_plot_pr_curves_writes_png(tmp_path):
    rng = np.random.default_rng(3)
    found, truths = to_ours(random_problem(rng, num_images=20))
    result = evaluate_detections(found, truths, ["cat", "dog", "person", "bus", "no-such-class"])
    path = plot_pr_curves(result, tmp_path / "sub" / "pr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
