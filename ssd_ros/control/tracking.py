"""Multi-object tracker (ByteTrack-style): stable ids for detections across frames, no ROS.

Per frame (:meth:`Tracker.update`):

1. Every track's box is predicted to the frame's stamp by a constant-velocity Kalman filter on the box
   centre and size (four independent position/velocity filters per track, noise scaled by the box height).
2. Detections at least ``track_high_score`` confident are matched to all tracks (confirmed, tentative and
   lost ones) by IoU with the predicted box; then the remaining detections between ``track_low_score``
   and ``track_high_score`` are matched to the confirmed tracks still unmatched, with a stricter IoU
   (ByteTrack's second stage: a partly hidden person scores low but is still that person). A pair needs
   the same class name and width and height within ``track_max_size_change`` of the prediction: a nearer
   person walking in front of a farther one overlaps it but is much bigger, and must not steal its id.
3. An unmatched high-score detection starts a tentative track; ``track_min_hits`` consecutive matches
   confirm it and give it its id; a tentative track that misses a frame is dropped (a false positive).
   A confirmed track not matched for ``track_max_age_s`` is deleted; its id is never reused.

Ids are decimal strings ("1", "2", ...) in order of confirmation, so the same input sequence always
gives the same ids. Detections without a confirmed track get "" (tentative, below ``track_low_score``,
unmatched low-score, or a malformed box).

Why not a library: ``supervision`` (MIT) ships ByteTrack, but requires scipy, matplotlib, PyAV and
requests, hundreds of MB on a Raspberry Pi for ~200 lines of numpy; ``trackers`` (Apache-2.0) adds
opencv-python, which conflicts with the headless OpenCV the project uses. Neither is in the workspace.
Association is greedy on IoU (highest first, ties by index) rather than Hungarian: scipy's
``linear_sum_assignment`` is not installed, and with the IoU and size gates a detection rarely has two
plausible tracks, where greedy and optimal agree; greedy is also deterministic by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ssd_ros.settings import check_settings, setting
from ssd_ros.vision.detections import Detections, iou_matrix, similar_size


@dataclass(frozen=True)
class TrackerParams:
    """Tuning of :class:`Tracker` (field names are the detector node's parameter names)."""

    track_high_score: float = setting(
        0.5, "detections at least this confident are matched first and may start a track", limits=(0.0, 1.0)
    )
    track_low_score: float = setting(
        0.1,
        "detections below this are never tracked; between it and track_high_score they only extend confirmed tracks",
        limits=(0.0, 1.0),
    )
    track_match_iou: float = setting(
        0.2, "IoU with a track's predicted box that a high-score detection needs to continue it", limits=(0.0, 1.0)
    )
    track_low_match_iou: float = setting(
        0.5, "IoU with a track's predicted box that a low-score detection needs to continue it", limits=(0.0, 1.0)
    )
    track_max_size_change: float = setting(
        1.5,
        "width or height ratio to the predicted box beyond which a detection is another object",
        limits=(1.0, 100.0),
    )
    track_min_hits: int = setting(
        2, "consecutive frames with a detection before a track is confirmed and gets its id", limits=(1, 1000)
    )
    track_max_age_s: float = setting(
        1.0, "a confirmed track not seen for this long is deleted (its id is never reused)", limits=(0.0, 3600.0)
    )

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        check_settings(self)
        if self.track_low_score > self.track_high_score:
            raise ValueError("track_low_score must be <= track_high_score")


# Kalman noise, as fractions of the box height (ByteTrack scales its noise the same way, so that near and far
# objects are tracked alike): measurement std of a box edge, and std of the acceleration (per s^2) of centre
# and size: a walking person plus the rover's own turning (the image of a static scene swings when it steers).
MEASUREMENT_STD = 0.05
CENTRE_ACCEL_STD_PER_S2 = 2.0
SIZE_ACCEL_STD_PER_S2 = 0.5
INITIAL_VELOCITY_STD_PER_S = 1.0


def greedy_match(score: np.ndarray, minimum: float) -> list[tuple[int, int]]:
    """(row, column) pairs, highest ``score`` first, each row and column used once, pairs below ``minimum`` never.

    Ties are broken by row, then column index, so the result depends only on the input.
    """
    rows, cols = np.nonzero(score >= minimum)
    order = np.lexsort((cols, rows, -score[rows, cols]))
    used_rows, used_cols, pairs = set(), set(), []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_rows and c not in used_cols:
            used_rows.add(r)
            used_cols.add(c)
            pairs.append((r, c))
    return pairs


class IdSwitchCounter:
    """Identity switches against ground truth (the MOT benchmarks' IDSW).

    A switch is a true object matched to a track id other than the one it was last matched to. Frames where it
    is unmatched or its detection has no id do not count; coming back under its old id after another one
    counts again.
    """

    def __init__(self) -> None:
        """No object seen yet."""
        self.last_id: dict[str, str] = {}
        self.switches = 0
        self.matched = 0  # true object instances that matched a detection with an id

    def add(self, pairs) -> None:
        """One frame's ``(true object id, track id)`` pairs (track id "" = untracked detection)."""
        for truth, track_id in pairs:
            if not track_id:
                continue
            self.matched += 1
            self.switches += truth in self.last_id and self.last_id[truth] != track_id
            self.last_id[truth] = track_id


def match_truth(truth_boxes: np.ndarray, boxes: np.ndarray, min_iou: float = 0.5) -> list[tuple[int, int]]:
    """(truth index, detection index) pairs, greedy by IoU (at least ``min_iou``), each used once."""
    truth_boxes = np.asarray(truth_boxes, np.float64).reshape(-1, 4)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not len(truth_boxes) or not len(boxes):
        return []
    return greedy_match(np.nan_to_num(iou_matrix(truth_boxes, boxes)), min_iou)


def _to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    return np.stack(
        [
            (boxes[:, 0] + boxes[:, 2]) / 2,
            (boxes[:, 1] + boxes[:, 3]) / 2,
            boxes[:, 2] - boxes[:, 0],
            boxes[:, 3] - boxes[:, 1],
        ],
        axis=1,
    )


def _to_xyxy(state: np.ndarray) -> np.ndarray:
    cx, cy, w, h = state[:, 0], state[:, 1], np.maximum(state[:, 2], 1e-3), np.maximum(state[:, 3], 1e-3)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


class Tracker:
    """ByteTrack-style multi-object tracker; see the module docstring. Not thread-safe.

    State is a structure of arrays, one row per track: ``_x`` (N, 4) centre x, centre y, width, height
    (px); ``_v`` (N, 4) their rates (px/s); ``_p`` (N, 4, 3) each axis' covariance (pos-pos, pos-vel,
    vel-vel); plus class name, id ("" while tentative), hit count and when it was last matched.
    """

    def __init__(self, params: TrackerParams = TrackerParams()):
        """A tracker with no tracks; ``params`` is validated (``ValueError`` on bad values)."""
        params.validate()
        self.params = params
        self._x = np.zeros((0, 4))
        self._v = np.zeros((0, 4))
        self._p = np.zeros((0, 4, 3))
        self._names: list[str] = []
        self._ids: list[str] = []
        self._hits = np.zeros(0, np.int64)
        self._seen_s = np.zeros(0)
        self._stamp_s: float | None = None
        self._next_id = 1

    def update(self, detections: Detections, stamp_s: float) -> Detections:
        """Track one frame taken at ``stamp_s`` (seconds); the same detections with ``track_ids`` set.

        A stamp not newer than the previous frame's (or not finite) is taken as that stamp: no motion predicted.
        """
        p = self.params
        if not math.isfinite(stamp_s):
            stamp_s = 0.0 if self._stamp_s is None else self._stamp_s
        dt = 0.0 if self._stamp_s is None or not stamp_s > self._stamp_s else stamp_s - self._stamp_s
        self._stamp_s = stamp_s if self._stamp_s is None else max(self._stamp_s, stamp_s)
        self._predict(dt)
        boxes = np.asarray(detections.boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(detections.scores, np.float64).reshape(-1)
        names = detections.names
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
            valid &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (scores >= p.track_low_score)
        high = np.flatnonzero(valid & (scores >= p.track_high_score))
        low = np.flatnonzero(valid & (scores < p.track_high_score))
        gate = self._gate(boxes, names)
        # (track row -> detection index); stage 1: confident detections against every track.
        matches = self._match(gate, np.arange(len(self._ids)), high, p.track_match_iou)
        confirmed_left = np.array([k for k, i in enumerate(self._ids) if i and k not in matches], np.int64)
        matches.update(self._match(gate, confirmed_left, low, p.track_low_match_iou))
        self._correct(matches, boxes)
        ids = [""] * len(scores)
        for k, d in matches.items():
            ids[d] = self._ids[k]
        taken = set(matches.values())
        births = [int(d) for d in high if d not in taken]
        self._retire(matches)  # renumbers the rows: the ids were read before
        for d, track_id in zip(births, self._birth(boxes[births], [names[d] for d in births])):
            ids[d] = track_id
        return replace(detections, track_ids=tuple(ids))

    # -- steps -----------------------------------------------------------------------------------------------
    def _predict(self, dt: float) -> None:
        """Constant-velocity prediction of every track by ``dt`` seconds, covariance grown by white acceleration."""
        if dt <= 0.0 or not len(self._ids):
            return
        self._x += self._v * dt
        h = np.maximum(self._x[:, 3:4], 1.0)
        accel = np.concatenate([np.full((1, 2), CENTRE_ACCEL_STD_PER_S2), np.full((1, 2), SIZE_ACCEL_STD_PER_S2)], 1)
        q = (accel * h) ** 2  # (N, 4)
        p00, p01, p11 = self._p[..., 0], self._p[..., 1], self._p[..., 2]
        self._p = np.stack(
            [
                p00 + 2 * dt * p01 + dt * dt * p11 + q * dt**3 / 3,
                p01 + dt * p11 + q * dt**2 / 2,
                p11 + q * dt,
            ],
            axis=-1,
        )

    def _gate(self, boxes: np.ndarray, names: list[str]) -> np.ndarray:
        """IoU of every track's predicted box with every detection, zero where class or size rule them out."""
        if not len(self._ids) or not len(boxes):
            return np.zeros((len(self._ids), len(boxes)))
        predicted = _to_xyxy(self._x)
        with np.errstate(invalid="ignore"):
            iou = np.nan_to_num(iou_matrix(predicted, boxes))
        size_ok = similar_size(predicted, boxes, self.params.track_max_size_change)
        code = {name: i for i, name in enumerate(dict.fromkeys(self._names + names))}  # compared as integers
        same_class = np.array([code[n] for n in self._names])[:, None] == np.array([code[n] for n in names])[None, :]
        return np.where(size_ok & same_class, iou, 0.0)

    @staticmethod
    def _match(gate: np.ndarray, rows: np.ndarray, columns: np.ndarray, minimum: float) -> dict[int, int]:
        if not len(rows) or not len(columns):
            return {}
        pairs = greedy_match(gate[np.ix_(rows, columns)], max(minimum, 1e-9))
        return {int(rows[r]): int(columns[c]) for r, c in pairs}

    def _correct(self, matches: dict[int, int], boxes: np.ndarray) -> None:
        """Kalman update of the matched tracks with their detections' boxes."""
        if not matches:
            return
        rows = np.fromiter(matches.keys(), np.int64)
        z = _to_cxcywh(boxes[np.fromiter(matches.values(), np.int64)])
        r = (MEASUREMENT_STD * np.maximum(z[:, 3:4], 1.0)) ** 2
        p00, p01, p11 = (self._p[rows, :, i] for i in range(3))
        s = p00 + r
        k0, k1 = p00 / s, p01 / s
        innovation = z - self._x[rows]
        self._x[rows] += k0 * innovation
        self._v[rows] += k1 * innovation
        self._p[rows] = np.stack([(1 - k0) * p00, (1 - k0) * p01, p11 - k1 * p01], axis=-1)
        self._hits[rows] += 1
        self._seen_s[rows] = self._stamp_s
        for k in rows:
            if not self._ids[k] and self._hits[k] >= self.params.track_min_hits:
                self._ids[k] = str(self._next_id)
                self._next_id += 1

    def _retire(self, matches: dict[int, int]) -> None:
        """Drop tentative tracks that missed this frame and confirmed ones unseen for ``track_max_age_s``."""
        matched = np.zeros(len(self._ids), bool)
        matched[list(matches)] = True
        confirmed = np.array([bool(i) for i in self._ids], bool)
        age = self._stamp_s - self._seen_s
        keep = matched | (confirmed & (age <= self.params.track_max_age_s))
        if keep.all():
            return
        index = np.flatnonzero(keep)
        self._x, self._v, self._p = self._x[index], self._v[index], self._p[index]
        self._hits, self._seen_s = self._hits[index], self._seen_s[index]
        self._names = [self._names[k] for k in index]
        self._ids = [self._ids[k] for k in index]

    def _birth(self, boxes: np.ndarray, names: list[str]) -> list[str]:
        """New tentative tracks (confirmed at once when ``track_min_hits`` is 1); their ids."""
        if not len(boxes):
            return []
        z = _to_cxcywh(boxes)
        h = np.maximum(z[:, 3:4], 1.0)
        p = np.zeros((len(z), 4, 3))
        p[..., 0] = (MEASUREMENT_STD * h) ** 2
        p[..., 2] = (INITIAL_VELOCITY_STD_PER_S * h) ** 2
        self._x = np.concatenate([self._x, z])
        self._v = np.concatenate([self._v, np.zeros_like(z)])
        self._p = np.concatenate([self._p, p])
        self._names += names
        self._hits = np.concatenate([self._hits, np.ones(len(z), np.int64)])
        self._seen_s = np.concatenate([self._seen_s, np.full(len(z), float(self._stamp_s))])
        new = []
        for _ in range(len(z)):
            track_id = ""
            if self.params.track_min_hits <= 1:
                track_id = str(self._next_id)
                self._next_id += 1
            self._ids.append(track_id)
            new.append(track_id)
        return new
