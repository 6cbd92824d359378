"""Multi-object tracker (ByteTrack-style): the one owner of object identity across frames, no ROS.

A track is *tentative* from its first detection, *tracked* once confirmed (it has its id), *lost* while
unmatched, and *removed* when lost for longer than ``track_max_age_s`` (its id is never reused). A lost track
that is seen again within its max age is re-activated under its old id: a person hidden behind another one
for a second or two comes back as the same track. Per frame (:meth:`Tracker.update`):

1. Every track's box is predicted to the frame's stamp by a constant-velocity Kalman filter on the box
   centre and size (four independent position/velocity filters per track, noise scaled by the box height).
2. Detections at least ``track_high_score`` confident are matched to every track (tentative, tracked and
   lost) by IoU with the predicted box; then the remaining detections between ``track_low_score`` and
   ``track_high_score`` are matched to the tracked tracks still unmatched, with a stricter IoU (ByteTrack's
   second stage: a partly hidden person scores low but is still that person); then the lost tracks still
   unmatched are matched to the confident detections left by IoU with their *last observed* box (OC-SORT's
   observation-centric recovery: after a long gap the velocity prediction has drifted, while a person who
   stood still, or a rover that stopped when it lost them, sees them again where they were). A pair needs
   the same class name and width and height within ``track_max_size_change`` of the track's box: a nearer
   person walking in front of a farther one overlaps it but is much bigger, and must not steal its id.
3. An unmatched confident detection starts a tentative track; ``track_min_hits`` consecutive matches
   confirm it and give it its id; a tentative track that misses a frame is dropped (a false positive).

Ids are decimal strings ("1", "2", ...) in order of confirmation, so the same input sequence always
gives the same ids. Detections without a confirmed track get "" (tentative, below ``track_low_score``,
unmatched low-score, or a malformed box).

Why not a library: ``supervision`` (MIT) ships ByteTrack, but requires scipy, matplotlib, PyAV and
requests, hundreds of MB on a Raspberry Pi for ~300 lines of numpy; ``trackers`` (Apache-2.0) adds
opencv-python, which conflicts with the headless OpenCV the project uses. Neither is in the workspace.
Association is greedy on IoU (highest first, ties by index) rather than Hungarian: scipy's
``linear_sum_assignment`` is not installed, and with the IoU and size gates a detection rarely has two
plausible tracks, where greedy and optimal agree; greedy is also deterministic by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ssd_ros.settings import Settings, setting
from ssd_ros.vision.detections import Detections, iou_matrix, similar_size

TENTATIVE, TRACKED, LOST, REMOVED = "tentative", "tracked", "lost", "removed"


@dataclass(frozen=True)
class TrackerParams(Settings):
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
        2.5,
        "a track unseen this long is removed (its id is never reused); seen again before, it keeps its id",
        limits=(0.0, 3600.0),
    )

    def check(self) -> None:
        """Raise ``ValueError`` if the low score threshold is above the high one."""
        if self.track_low_score > self.track_high_score:
            raise ValueError("track_low_score must be <= track_high_score")


# Kalman noise, as fractions of the box height (ByteTrack scales its noise the same way, so that near and far
# objects are tracked alike): measurement std of a box edge, and std of the acceleration (per s^2) of centre
# and size: a walking person plus the rover's own turning (the image of a static scene swings when it steers).
MEASUREMENT_STD = 0.05
CENTRE_ACCEL_STD_PER_S2 = 2.0
SIZE_ACCEL_STD_PER_S2 = 0.5
INITIAL_VELOCITY_STD_PER_S = 1.0


class BoxFilter:
    """Constant-velocity Kalman filters of N boxes (centre x, centre y, width, height; pixels), vectorised.

    ``x`` (N, 4) the state, ``v`` (N, 4) its rates (px/s), ``p`` (N, 4, 3) each axis' covariance (pos-pos,
    pos-vel, vel-vel): the four axes are independent filters. The tracker keeps one row per track; the
    follower keeps one for its target, to tell whether its id's box moved plausibly.
    """

    def __init__(self, boxes_xyxy: np.ndarray | None = None):
        """Filters starting at ``boxes_xyxy`` (N, 4; none if None) at rest, with the velocity unknown."""
        self.x = to_cxcywh(np.asarray(boxes_xyxy if boxes_xyxy is not None else (), np.float64).reshape(-1, 4))
        self.v = np.zeros_like(self.x)
        h = np.maximum(self.x[:, 3:4], 1.0)
        self.p = np.zeros((len(self.x), 4, 3))
        self.p[..., 0] = (MEASUREMENT_STD * h) ** 2
        self.p[..., 2] = (INITIAL_VELOCITY_STD_PER_S * h) ** 2

    def boxes(self) -> np.ndarray:
        """The filtered boxes, xyxy (N, 4)."""
        return to_xyxy(self.x)

    def predict(self, dt: float) -> None:
        """Move every box ``dt`` seconds at its velocity; the covariance grows by white acceleration."""
        if dt <= 0.0 or not len(self.x):
            return
        self.x += self.v * dt
        h = np.maximum(self.x[:, 3:4], 1.0)
        accel = np.concatenate([np.full((1, 2), CENTRE_ACCEL_STD_PER_S2), np.full((1, 2), SIZE_ACCEL_STD_PER_S2)], 1)
        q = (accel * h) ** 2  # (N, 4)
        p00, p01, p11 = self.p[..., 0], self.p[..., 1], self.p[..., 2]
        self.p = np.stack(
            [p00 + 2 * dt * p01 + dt * dt * p11 + q * dt**3 / 3, p01 + dt * p11 + q * dt**2 / 2, p11 + q * dt],
            axis=-1,
        )

    def innovation(self, rows: np.ndarray, boxes_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Measured minus predicted (K, 4) and its variance (K, 4) for row ``rows[k]`` seeing ``boxes_xyxy[k]``."""
        z = to_cxcywh(np.asarray(boxes_xyxy, np.float64).reshape(-1, 4))
        r = (MEASUREMENT_STD * np.maximum(z[:, 3:4], 1.0)) ** 2
        return z - self.x[rows], self.p[rows, :, 0] + r

    def mahalanobis2(self, row: int, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance (chi-square, 4 degrees of freedom) of each box from row ``row``'s."""
        boxes_xyxy = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
        innovation, variance = self.innovation(np.full(len(boxes_xyxy), row), boxes_xyxy)
        return (innovation**2 / variance).sum(axis=1)

    def correct(self, rows: np.ndarray, boxes_xyxy: np.ndarray) -> None:
        """Kalman update of rows ``rows`` with the measured ``boxes_xyxy`` (one each)."""
        if not len(rows):
            return
        innovation, s = self.innovation(rows, boxes_xyxy)
        p00, p01, p11 = (self.p[rows, :, i] for i in range(3))
        k0, k1 = p00 / s, p01 / s
        self.x[rows] += k0 * innovation
        self.v[rows] += k1 * innovation
        self.p[rows] = np.stack([(1 - k0) * p00, (1 - k0) * p01, p11 - k1 * p01], axis=-1)

    def keep(self, index: np.ndarray) -> None:
        """Keep only rows ``index`` (in that order)."""
        self.x, self.v, self.p = self.x[index], self.v[index], self.p[index]

    def extend(self, other: BoxFilter) -> None:
        """Append ``other``'s rows."""
        self.x = np.concatenate([self.x, other.x])
        self.v = np.concatenate([self.v, other.v])
        self.p = np.concatenate([self.p, other.p])

    def shift_x(self, rows: np.ndarray, dx: np.ndarray) -> None:
        """Move the centres of ``rows`` sideways by ``dx`` pixels (the image motion of the camera turning)."""
        self.x[rows, 0] += dx


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


def to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    """Boxes xyxy (N, 4) -> centre x, centre y, width, height (N, 4)."""
    return np.stack(
        [
            (boxes[:, 0] + boxes[:, 2]) / 2,
            (boxes[:, 1] + boxes[:, 3]) / 2,
            boxes[:, 2] - boxes[:, 0],
            boxes[:, 3] - boxes[:, 1],
        ],
        axis=1,
    )


def to_xyxy(state: np.ndarray) -> np.ndarray:
    """Centre x, centre y, width, height (N, 4) -> xyxy (N, 4), sizes at least 1e-3 px."""
    cx, cy, w, h = state[:, 0], state[:, 1], np.maximum(state[:, 2], 1e-3), np.maximum(state[:, 3], 1e-3)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


class Tracker:
    """ByteTrack-style multi-object tracker; see the module docstring. Not thread-safe.

    State is a structure of arrays, one row per live (tentative, tracked or lost) track: its :class:`BoxFilter`
    row, last observed box, class name, id ("" while tentative), state, hit count and when it was last matched.
    """

    def __init__(self, params: TrackerParams = TrackerParams()):
        """A tracker with no tracks, tuned by ``params`` (validated when they were made)."""
        self.params = params
        self._next_id = 1
        self._drop_tracks()

    def _drop_tracks(self) -> None:
        """No tracks and no stamp seen; ``_next_id`` is kept, so an id is never given twice."""
        self._filter = BoxFilter()
        self._observed = np.zeros((0, 4))
        self._names: list[str] = []
        self._ids: list[str] = []
        self._states: list[str] = []
        self._hits = np.zeros(0, np.int64)
        self._seen_s = np.zeros(0)
        self._stamp_s: float | None = None

    def state(self, track_id: str) -> str | None:
        """``"tracked"``, ``"lost"`` or ``"removed"`` for an id this tracker gave; None for any other string."""
        if track_id in self._ids:
            return self._states[self._ids.index(track_id)]
        issued = track_id.isdecimal() and 0 < int(track_id) < self._next_id
        return REMOVED if issued else None

    def update(self, detections: Detections, stamp_s: float) -> Detections:
        """Track one frame taken at ``stamp_s`` (seconds); the same detections with ``track_ids`` set.

        A stamp equal to the newest seen (or not finite) is taken as that stamp: no motion predicted. A frame older
        than the newest (delivered out of order) gets the ids of the tracks it matches, and changes or starts none. A
        stamp older than the newest by more than ``track_max_age_s`` means the clock went back (a looping bag
        replay, a restarted simulator): every track is dropped, and the ids go on from the next unused one.
        """
        p = self.params
        if not math.isfinite(stamp_s):
            stamp_s = 0.0 if self._stamp_s is None else self._stamp_s
        if self._stamp_s is not None and stamp_s < self._stamp_s - p.track_max_age_s:
            # Ages count from the newest stamp, so tracks of the old timeline would never be removed, and a lost one
            # would give its id to whoever appeared where it was last seen.
            self._drop_tracks()
        late = self._stamp_s is not None and stamp_s < self._stamp_s
        if not late:
            self._filter.predict(0.0 if self._stamp_s is None else stamp_s - self._stamp_s)
            self._stamp_s = stamp_s
        boxes = np.asarray(detections.boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(detections.scores, np.float64).reshape(-1)
        names = detections.names
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
            valid &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (scores >= p.track_low_score)
        high = np.flatnonzero(valid & (scores >= p.track_high_score))
        low = np.flatnonzero(valid & (scores < p.track_high_score))
        rows = np.arange(len(self._ids))
        # (track row -> detection index); stage 1: confident detections against every track's prediction.
        predicted = self._filter.boxes()
        matches = self._match(predicted, rows, boxes, names, high, p.track_match_iou)
        tracked = np.array([k for k in rows if self._states[k] == TRACKED and k not in matches], np.int64)
        matches.update(self._match(predicted, tracked, boxes, names, low, p.track_low_match_iou))
        # Stage 3: lost tracks against where they were last seen.
        lost = np.array([k for k in rows if self._states[k] == LOST and k not in matches], np.int64)
        taken = set(matches.values())
        left = np.array([d for d in high if d not in taken], np.int64)
        matches.update(self._match(self._observed, lost, boxes, names, left, p.track_match_iou))
        # A late frame's boxes are of the past: correcting the tracks' present state with them would drag them back
        # and cut their velocity (a gap after it would then break the track), and would mark them seen now.
        if not late:
            self._correct(matches, boxes)
        ids = [""] * len(scores)
        for k, d in matches.items():
            ids[d] = self._ids[k]
        if late:
            return replace(detections, track_ids=tuple(ids))
        taken = set(matches.values())
        births = [int(d) for d in high if d not in taken]
        self._age(matches)  # renumbers the rows: the ids were read before
        for d, track_id in zip(births, self._birth(boxes[births], [names[d] for d in births])):
            ids[d] = track_id
        return replace(detections, track_ids=tuple(ids))

    # -- steps -----------------------------------------------------------------------------------------------
    def _match(
        self, track_boxes: np.ndarray, rows: np.ndarray, boxes: np.ndarray, names: list[str], columns, minimum: float
    ) -> dict[int, int]:
        """Pairs (track row -> detection index) of tracks ``rows`` and detections ``columns``, greedy by IoU.

        A track's box is its row of ``track_boxes``; a pair needs an IoU of ``minimum`` and the class and size gates.
        """
        if not len(rows) or not len(columns):
            return {}
        track_boxes, boxes = track_boxes[rows], boxes[columns]
        track_names, names = [self._names[k] for k in rows], [names[d] for d in columns]
        with np.errstate(invalid="ignore"):
            iou = np.nan_to_num(iou_matrix(track_boxes, boxes))
        size_ok = similar_size(track_boxes, boxes, self.params.track_max_size_change)
        code = {name: i for i, name in enumerate(dict.fromkeys(track_names + names))}  # compared as integers
        same_class = np.array([code[n] for n in track_names])[:, None] == np.array([code[n] for n in names])[None, :]
        pairs = greedy_match(np.where(size_ok & same_class, iou, 0.0), max(minimum, 1e-9))
        return {int(rows[r]): int(columns[c]) for r, c in pairs}

    def _correct(self, matches: dict[int, int], boxes: np.ndarray) -> None:
        """Kalman update of the matched tracks; a confirmed track matched is tracked (a lost one re-activated)."""
        if not matches:
            return
        rows = np.fromiter(matches.keys(), np.int64)
        measured = boxes[np.fromiter(matches.values(), np.int64)]
        self._filter.correct(rows, measured)
        self._observed[rows] = measured
        self._hits[rows] += 1
        self._seen_s[rows] = self._stamp_s
        for k in rows:
            if not self._ids[k] and self._hits[k] >= self.params.track_min_hits:
                self._ids[k] = str(self._next_id)
                self._next_id += 1
            if self._ids[k]:
                self._states[k] = TRACKED

    def _age(self, matches: dict[int, int]) -> None:
        """Unmatched confirmed tracks are lost; lost ones unseen for ``track_max_age_s`` and tentative ones go."""
        age = self._stamp_s - self._seen_s
        keep = []
        for k, state in enumerate(self._states):
            if k in matches:
                keep.append(k)
            elif state != TENTATIVE and age[k] <= self.params.track_max_age_s:
                self._states[k] = LOST
                keep.append(k)
        if len(keep) == len(self._ids):
            return
        index = np.array(keep, np.int64)
        self._filter.keep(index)
        self._observed, self._hits, self._seen_s = self._observed[index], self._hits[index], self._seen_s[index]
        self._names = [self._names[k] for k in index]
        self._ids = [self._ids[k] for k in index]
        self._states = [self._states[k] for k in index]

    def _birth(self, boxes: np.ndarray, names: list[str]) -> list[str]:
        """New tentative tracks (confirmed at once when ``track_min_hits`` is 1); their ids."""
        if not len(boxes):
            return []
        self._filter.extend(BoxFilter(boxes))
        self._observed = np.concatenate([self._observed, boxes])
        self._names += names
        self._hits = np.concatenate([self._hits, np.ones(len(boxes), np.int64)])
        self._seen_s = np.concatenate([self._seen_s, np.full(len(boxes), float(self._stamp_s))])
        new = []
        for _ in range(len(boxes)):
            track_id = ""
            if self.params.track_min_hits <= 1:
                track_id = str(self._next_id)
                self._next_id += 1
            self._ids.append(track_id)
            self._states.append(TRACKED if track_id else TENTATIVE)
            new.append(track_id)
        return new
