"""The detection result passed between the core's parts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Detections on one image, in that image's pixel coordinates.

    Attributes:
        boxes: (N, 4) float32 boxes ``x_min, y_min, x_max, y_max`` in original image pixels.
        scores: (N,) float32 confidences in [0, 1].
        labels: (N,) int64 indices into ``class_names``.
        class_names: the class list the labels index (a model's classes, background excluded).
        track_ids: a tracker's id of each detection (``Detection2D.id``; "" = not tracked), or None
            when no tracker ran (see :mod:`ssd_ros.control.tracking`).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    track_ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.boxes.shape != (n, 4) or self.labels.shape != (n,):
            raise ValueError(
                f"inconsistent detections: boxes {self.boxes.shape}, scores ({n},), labels {self.labels.shape}"
            )
        if self.track_ids is not None and len(self.track_ids) != n:
            raise ValueError(f"inconsistent detections: {len(self.track_ids)} track ids for {n} detections")

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def names(self) -> list[str]:
        """The class name of each detection."""
        return [self.class_names[i] for i in self.labels]

    @property
    def ids(self) -> tuple[str, ...]:
        """The track id of each detection, "" for every one when no tracker ran (``track_ids`` None)."""
        return ("",) * len(self) if self.track_ids is None else self.track_ids

    @classmethod
    def empty(cls, class_names: tuple[str, ...] = ()) -> Detections:
        """No detections."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), tuple(class_names))

    @classmethod
    def from_named(cls, boxes, scores, names, track_ids=None) -> Detections:
        """Build from per-detection class names (and track ids) as they arrive in a Detection2DArray."""
        class_names = tuple(dict.fromkeys(names))
        index = {name: i for i, name in enumerate(class_names)}
        return cls(
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(scores, np.float32).reshape(-1),
            np.asarray([index[n] for n in names], np.int64),
            class_names,
            None if track_ids is None else tuple(track_ids),
        )


def iou_matrix(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """(N, M) IoU of xyxy boxes in continuous coordinates (no "+1")."""
    lt = np.maximum(boxes[:, None, :2], others[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], others[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    intersection = wh[..., 0] * wh[..., 1]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    other_area = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area[:, None] + other_area[None, :] - intersection
    # Degenerate pairs (zero union) have IoU 0 rather than NaN, so they can never match.
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def similar_size(boxes: np.ndarray, others: np.ndarray, max_ratio: float) -> np.ndarray:
    """(N, M) whether the width and the height of xyxy boxes are both within a factor ``max_ratio`` of another's.

    The tracker's box-size gate: a nearer person is much bigger than a
    farther one it overlaps. Width and height both, as a near person's box clipped at the image top can have a
    far person's height. An empty, inverted or non-finite box is of no other's size.
    """
    sizes = np.clip(boxes[:, 2:] - boxes[:, :2], 0.0, None)
    other_sizes = np.clip(others[:, 2:] - others[:, :2], 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.abs(np.log(sizes[:, None, :] / other_sizes[None, :, :]))
    return (log_ratio <= math.log(max_ratio)).all(axis=2)
