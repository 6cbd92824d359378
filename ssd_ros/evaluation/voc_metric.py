"""PASCAL VOC detection average precision, with the official devkit's semantics (ROS-free core).

What is computed, per class (as ``VOCevaldet.m`` / the Python ``voc_eval.py`` port do):

* every detection of the class over all images is ranked by score, highest first. Ties keep a
  deterministic order: image order, then the detection's order within its image (a stable sort; the devkit's
  ``argsort`` leaves ties in an unspecified order, so tied scores can move its AP slightly, never ours);
* each detection is matched to the ground truth of the same class in its image with the highest IoU; if that
  IoU is strictly greater than ``iou_threshold`` (0.5):

  - the ground truth is ``difficult``: the detection is *ignored* (neither true nor false positive);
  - otherwise, if no higher-ranked detection took it: true positive, and the ground truth is taken;
  - otherwise (a duplicate): false positive. There is no fallback to the second-best ground truth.

  otherwise: false positive;
* recall = TP / npos with npos = the non-difficult ground truths; precision = TP / (TP + FP);
* AP: ``"11point"`` (VOC2007, the default and the VOC2007-test convention): mean over t in 0, 0.1, ..., 1 of
  the highest precision at recall >= t (0 when that recall is never reached), with the thresholds of the
  devkit's ``np.arange(0, 1.1, 0.1)``; ``"allpoint"`` (VOC2010+): the area under the precision envelope
  (precision made monotonically non-increasing), summed where recall changes.

Boxes are 0-based continuous pixel edges (see :mod:`ssd_ros.evaluation.voc`), IoU uses plain ``x_max - x_min`` widths.
The devkit adds 1 to widths because it works on 1-based inclusive pixel indices; after :mod:`ssd_ros.evaluation.voc`'s
``xmin - 1`` conversion of the ground truth, the widths are already the devkit's ``xmax - xmin + 1``.

Classes with no non-difficult ground truth have no defined recall: their AP is NaN, they are listed in
:attr:`VocEvaluation.classes_without_ground_truth`, and they are excluded from the mAP.

The matching is vectorised per image (one IoU matrix against all its ground truths, masked by class) and
the ranking per class, so a VOC2007-test-sized problem (4952 images x 200 detections) takes about a second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ssd_ros.evaluation.voc import VocAnnotation
from ssd_ros.vision.detections import Detections, iou_matrix

__all__ = [
    "METRICS",
    "ClassEvaluation",
    "VocEvaluation",
    "evaluate_detections",
    "matched_fraction",
    "voc_ap",
]

METRICS: tuple[str, ...] = ("11point", "allpoint")

# The devkit's recall thresholds, bit for bit (0.30000000000000004 etc. included).
_ELEVEN_POINTS = np.arange(0.0, 1.1, 0.1)

_TRUE_POSITIVE, _FALSE_POSITIVE, _IGNORED = 1, 0, -1


@dataclass(frozen=True)
class ClassEvaluation:
    """The result for one class.

    Attributes:
        name: the class name.
        ap: average precision, NaN when the class has no non-difficult ground truth.
        npos: non-difficult ground-truth objects.
        num_difficult: difficult ground-truth objects.
        true_positives: detections counted as true positives.
        false_positives: detections counted as false positives.
        ignored: detections matched to a difficult object (neither true nor false positive).
        scores: (K,) scores of the counted detections, highest first (K = true + false positives).
        precision: (K,) precision after each of those detections.
        recall: (K,) recall after each of those detections (all NaN when npos == 0).
    """

    name: str
    ap: float
    npos: int
    num_difficult: int
    true_positives: int
    false_positives: int
    ignored: int
    scores: np.ndarray
    precision: np.ndarray
    recall: np.ndarray

    @property
    def has_ground_truth(self) -> bool:
        """Whether the class has non-difficult ground truth (and so a defined AP)."""
        return self.npos > 0


@dataclass(frozen=True)
class VocEvaluation:
    """Per-class results of :func:`evaluate_detections`, in class-list order."""

    metric: str
    iou_threshold: float
    num_images: int
    classes: tuple[ClassEvaluation, ...]

    @property
    def ap(self) -> dict[str, float]:
        """Class name -> AP (NaN for classes without ground truth)."""
        return {c.name: c.ap for c in self.classes}

    @property
    def map(self) -> float:
        """Mean AP over the classes that have ground truth (NaN when none has)."""
        aps = [c.ap for c in self.classes if c.has_ground_truth]
        return float(np.mean(aps)) if aps else math.nan

    @property
    def classes_without_ground_truth(self) -> list[str]:
        """Classes whose AP is undefined (no non-difficult ground truth) and left out of the mAP."""
        return [c.name for c in self.classes if not c.has_ground_truth]

    def __getitem__(self, name: str) -> ClassEvaluation:
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self, curves: bool = False) -> dict[str, Any]:
        """JSON-ready summary (NaN written as None); ``curves`` adds the precision/recall/score arrays."""

        def number(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        classes = []
        for c in self.classes:
            entry: dict[str, Any] = {
                "name": c.name,
                "ap": number(c.ap),
                "npos": c.npos,
                "num_difficult": c.num_difficult,
                "true_positives": c.true_positives,
                "false_positives": c.false_positives,
                "ignored": c.ignored,
            }
            if curves:
                entry["scores"] = c.scores.tolist()
                entry["precision"] = c.precision.tolist()
                entry["recall"] = [number(r) for r in c.recall]
            classes.append(entry)
        return {
            "metric": self.metric,
            "iou_threshold": self.iou_threshold,
            "num_images": self.num_images,
            "map": number(self.map),
            "classes_without_ground_truth": self.classes_without_ground_truth,
            "classes": classes,
        }


def voc_ap(recall: np.ndarray, precision: np.ndarray, metric: str = "11point") -> float:
    """AP from a ranked list's recall and precision arrays (the devkit's ``voc_ap``).

    Args:
        recall: (K,) non-decreasing recall after each ranked detection.
        precision: (K,) precision after each ranked detection.
        metric: ``"11point"`` (VOC2007) or ``"allpoint"`` (VOC2010+).
    """
    _check_metric(metric)
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if metric == "11point":
        # Highest precision at recall >= t: the suffix maximum at the first index reaching t (recall is sorted).
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        first = np.searchsorted(recall, _ELEVEN_POINTS, side="left")
        reached = first < len(recall)
        return float(envelope[first[reached]].sum() / len(_ELEVEN_POINTS))
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown AP metric {metric!r}; choose one of {METRICS}")


def matched_fraction(reference: Sequence[Detections], other: Sequence[Detections], iou: float = 0.5) -> float:
    """Fraction of ``reference``'s detections that ``other`` also found: same class, IoU >= ``iou``.

    Matched one to one per image, reference detections in score order, each taking its best free partner
    (how two models or two backends are compared when neither is ground truth). 1.0 when there is nothing
    to match. Classes are compared by name: the two sides' labels may index different class lists (a
    Detection2DArray's names arrive in any order).
    """
    matched = total = 0
    for ref, oth in zip(reference, other, strict=True):
        total += len(ref)
        if not len(ref) or not len(oth):
            continue
        same_class = np.asarray(ref.names, object)[:, None] == np.asarray(oth.names, object)[None, :]
        # -1, below any threshold: a partner of another class never matches, even at iou=0.
        overlaps = np.where(same_class, iou_matrix(ref.boxes, oth.boxes), -1.0)
        free = np.ones(len(oth), bool)
        for row in overlaps[np.argsort(-ref.scores, kind="stable")]:
            best = int(np.argmax(np.where(free, row, -1.0)))
            if free[best] and row[best] >= iou:
                free[best] = False
                matched += 1
    return matched / total if total else 1.0


def _match_image(
    boxes: np.ndarray,
    labels: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    gt_difficult: np.ndarray,
    iou_threshold: float,
) -> np.ndarray:
    """Outcome of each detection of one image, detections given in rank order (highest score first)."""
    outcome = np.full(len(labels), _FALSE_POSITIVE, np.int8)
    if len(gt_labels) == 0 or len(labels) == 0:
        return outcome
    iou = iou_matrix(boxes.astype(np.float64), gt_boxes.astype(np.float64))
    iou[labels[:, None] != gt_labels[None, :]] = -1.0  # only same-class ground truth can match
    best = iou.argmax(axis=1)
    hit = iou[np.arange(len(labels)), best] > iou_threshold
    outcome[hit & gt_difficult[best]] = _IGNORED
    candidates = np.flatnonzero(hit & ~gt_difficult[best])
    # The first-ranked candidate of each ground truth takes it; later ones are duplicates (false positives).
    _, first = np.unique(best[candidates], return_index=True)
    outcome[candidates[first]] = _TRUE_POSITIVE
    return outcome


def evaluate_detections(
    detections: Sequence[Detections],
    ground_truths: Sequence[VocAnnotation],
    class_names: Sequence[str] | None = None,
    *,
    iou_threshold: float = 0.5,
    metric: str = "11point",
) -> VocEvaluation:
    """VOC AP of each class and the mAP over a set of images.

    Args:
        detections: per image, the detector's output (labels index its own ``class_names``; matched by name).
        ground_truths: per image (same order), the annotation: ``boxes`` (N, 4) in the same pixel coordinates,
            ``names`` and ``difficult`` flags, as :func:`ssd_ros.evaluation.voc.parse_annotation` returns.
        class_names: the classes to report, in this order (e.g. the checkpoint's); default: every class
            seen in the ground truth or the detections, sorted.
        iou_threshold: a detection matches when its IoU with a ground truth is strictly greater than this.
        metric: ``"11point"`` (VOC2007, default) or ``"allpoint"`` (VOC2010+).

    Raises:
        ValueError: the two sequences differ in length, a class is outside ``class_names``, or a bad option.
    """
    _check_metric(metric)
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} detection lists for {len(ground_truths)} annotated images")
    if class_names is None:
        seen = {n for gt in ground_truths for n in gt.names} | {n for d in detections for n in d.class_names}
        class_names = sorted(seen)
    class_names = tuple(class_names)
    labels, scores, outcomes, npos, num_difficult = _match_images(detections, ground_truths, class_names, iou_threshold)
    # Group by class, then rank by score; the stable sort keeps ties in image order, then in-image order.
    by_class = np.lexsort((-scores, labels))
    bounds = np.searchsorted(labels[by_class], np.arange(len(class_names) + 1))
    results = []
    for c, name in enumerate(class_names):
        ranked = by_class[bounds[c] : bounds[c + 1]]
        results.append(_rank_class(name, outcomes[ranked], scores[ranked], int(npos[c]), int(num_difficult[c]), metric))
    return VocEvaluation(metric, float(iou_threshold), len(ground_truths), tuple(results))


def _match_images(
    detections: Sequence[Detections],
    ground_truths: Sequence[VocAnnotation],
    class_names: tuple[str, ...],
    iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every detection's class index, score and outcome (image by image), and the per-class ground-truth counts.

    Returns ``(labels, scores, outcomes, npos, num_difficult)``: the first three over all detections, the
    last two per class of ``class_names``.
    """
    index = {name: i for i, name in enumerate(class_names)}

    def to_indices(names: Sequence[str], what: str) -> np.ndarray:
        missing = sorted(set(names) - index.keys())
        if missing:
            raise ValueError(f"{what} classes {missing} are not among the evaluated classes {list(class_names)}")
        return np.asarray([index[n] for n in names], np.int64)

    detection_maps: dict[tuple[str, ...], np.ndarray] = {}  # a detector's label -> evaluated class index
    all_labels, all_scores, all_outcomes = [], [], []
    npos = np.zeros(len(class_names), np.int64)
    num_difficult = np.zeros(len(class_names), np.int64)
    for det, gt in zip(detections, ground_truths):
        gt_labels = to_indices(gt.names, "ground-truth")
        gt_difficult = np.asarray(gt.difficult, bool).reshape(-1)
        npos += np.bincount(gt_labels[~gt_difficult], minlength=len(class_names))
        num_difficult += np.bincount(gt_labels[gt_difficult], minlength=len(class_names))
        if len(det) == 0:
            continue
        if det.class_names not in detection_maps:
            detection_maps[det.class_names] = to_indices(det.class_names, "detected")
        labels = detection_maps[det.class_names][det.labels]
        order = np.argsort(-det.scores, kind="stable")
        labels, scores = labels[order], det.scores[order]
        gt_boxes = np.asarray(gt.boxes, np.float64).reshape(-1, 4)
        all_outcomes.append(_match_image(det.boxes[order], labels, gt_boxes, gt_labels, gt_difficult, iou_threshold))
        all_labels.append(labels)
        all_scores.append(scores)
    labels = np.concatenate(all_labels) if all_labels else np.zeros(0, np.int64)
    scores = np.concatenate(all_scores).astype(np.float64) if all_scores else np.zeros(0)
    outcomes = np.concatenate(all_outcomes) if all_outcomes else np.zeros(0, np.int8)
    return labels, scores, outcomes, npos, num_difficult


def _rank_class(
    name: str, outcome: np.ndarray, scores: np.ndarray, npos: int, num_difficult: int, metric: str
) -> ClassEvaluation:
    """One class's precision/recall curve and AP from its detections' outcomes in rank order."""
    counted = outcome != _IGNORED
    tp = np.cumsum(outcome[counted] == _TRUE_POSITIVE)
    fp = np.cumsum(outcome[counted] == _FALSE_POSITIVE)
    precision = tp / np.maximum(tp + fp, 1)
    if npos > 0:
        recall = tp / npos
        ap = voc_ap(recall, precision, metric)
    else:
        recall, ap = np.full(len(tp), math.nan), math.nan
    return ClassEvaluation(
        name=name,
        ap=ap,
        npos=npos,
        num_difficult=num_difficult,
        true_positives=int(tp[-1]) if len(tp) else 0,
        false_positives=int(fp[-1]) if len(fp) else 0,
        ignored=int(np.count_nonzero(~counted)),
        scores=scores[counted],
        precision=precision.astype(np.float64),
        recall=recall.astype(np.float64),
    )
