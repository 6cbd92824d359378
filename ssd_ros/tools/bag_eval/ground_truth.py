"""What a ``bag_eval`` run is scored against, read and checked before the model is loaded.

VOC annotations per frame (``--ground-truth``) for the AP table, MOT tracks (``--gt-tracks``) for id switches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssd_ros.evaluation.voc import VocAnnotation, VocFormatError, parse_annotation
from ssd_ros.tools.bag_eval.config import EvalConfig
from ssd_ros.tools.bagio import BagToolError, typestore


@dataclass(frozen=True)
class GroundTruth:
    """The annotations of a run, either part may be absent.

    ``annotations`` are keyed by frame index (``match`` "index") or header stamp in ns ("stamp");
    ``tracks`` maps a frame index (from 0) to (object ids, xyxy boxes).
    """

    match: str | None = None
    annotations: dict[int, VocAnnotation] | None = None
    tracks: dict[int, tuple[list[str], np.ndarray]] | None = None

    def annotation(self, index: int, stamp_ns: int) -> VocAnnotation | None:
        """The annotation of the frame at ``index`` with header stamp ``stamp_ns``, if there is one."""
        if self.annotations is None:
            return None
        return self.annotations.get(index if self.match == "index" else stamp_ns)


def load_ground_truth(config: EvalConfig) -> GroundTruth:
    """The run's ground truth from ``--ground-truth`` and ``--gt-tracks``; ``BagToolError`` naming a bad one."""
    match, annotations = load_annotations(config.ground_truth, config.gt_match) if config.ground_truth else (None, None)
    if config.gt_tracks and not config.tracking:
        raise BagToolError("--gt-tracks counts the tracker's id switches: it cannot go with --no-tracking")
    tracks = load_gt_tracks(config.gt_tracks) if config.gt_tracks else None
    return GroundTruth(match, annotations, tracks)


def load_annotations(folder: Path, match: str) -> tuple[str, dict]:
    """``(mode, annotations)``: by frame index (mode ``index``) or by header stamp in ns (mode ``stamp``).

    ``auto`` picks ``stamp`` when every XML file is named ``<integer>.xml`` (as ``make_bag --labels-out``
    writes them), otherwise ``index``: the XML files in sorted name order are frames 0, 1, 2, ...
    """
    if not folder.is_dir():
        raise BagToolError(f"ground-truth folder {folder} does not exist")
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise BagToolError(f"no VOC XML files in ground-truth folder {folder}")
    if match == "auto":
        match = "stamp" if all(p.stem.isdigit() for p in files) else "index"
    if match == "stamp" and not all(p.stem.isdigit() for p in files):
        bad = next(p.name for p in files if not p.stem.isdigit())
        raise BagToolError(f"--gt-match stamp needs files named <stamp_ns>.xml; {folder} has {bad}")
    try:
        if match == "stamp":
            return match, {int(p.stem): parse_annotation(p) for p in files}
        return match, {i: parse_annotation(p) for i, p in enumerate(files)}
    except VocFormatError as exc:
        raise BagToolError(str(exc)) from exc


def load_gt_tracks(path: Path) -> dict[int, tuple[list[str], np.ndarray]]:
    """Ground-truth tracks in the MOTChallenge text format: ``frame, id, left, top, width, height[, ...]``.

    ``frame`` counts the image topic's messages from 1 (MOT's convention); returns frame index (from 0) ->
    (object ids, xyxy boxes). Blank lines and ``#`` comments are skipped; anything else malformed is an error
    naming the line.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise BagToolError(f"--gt-tracks {path}: {exc}") from exc
    rows: dict[int, list[tuple[str, list[float]]]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        try:
            frame, object_id = int(fields[0]), str(int(float(fields[1])))
            left, top, width, height = (float(v) for v in fields[2:6])
        except (IndexError, ValueError):
            raise BagToolError(
                f"{path}:{number}: expected 'frame, id, left, top, width, height', got {line!r}"
            ) from None
        if frame < 1 or not (width > 0 and height > 0) or not math.isfinite(left + top + width + height):
            raise BagToolError(f"{path}:{number}: frame must be >= 1 and the box finite with a positive size")
        rows.setdefault(frame - 1, []).append((object_id, [left, top, left + width, top + height]))
    if not rows:
        raise BagToolError(f"--gt-tracks {path}: no ground-truth boxes")
    return {i: ([o for o, _ in r], np.array([b for _, b in r], np.float64)) for i, r in rows.items()}


def check_ground_truth(config: EvalConfig, truth: GroundTruth, class_names, image_conn, salvaged: bool) -> None:
    """Refuse annotations the evaluation could not use: unknown classes, or a count that cannot match by index."""
    annotations = truth.annotations
    if not annotations:
        return
    unknown = sorted({name for ann in annotations.values() for name in ann.names} - set(class_names))
    if unknown:
        raise BagToolError(
            f"ground-truth classes {unknown} in {config.ground_truth} are not classes of the checkpoint "
            f"{list(class_names)}"
        )
    # A salvaged bag's count is what survived, not what the annotations were made for.
    if truth.match == "index" and not salvaged and image_conn.msgcount and image_conn.msgcount != len(annotations):
        raise BagToolError(
            f"{len(annotations)} annotations in {config.ground_truth} for {image_conn.msgcount} frames on "
            f"{image_conn.topic}: index matching needs one XML per frame (or name them <stamp_ns>.xml)"
        )


def check_stamps(config: EvalConfig, truth: GroundTruth, reader, image_conn) -> None:
    """Refuse ``<stamp_ns>.xml`` annotations that match no frame the run reads (another recording's labels).

    Only the image messages' header stamps are read (rosbags' CDR reader, which leaves the pixels in place), so a
    mismatch fails before the model loads, not after the whole bag was evaluated into an AP of no frames. A frame
    that cannot be read is left to the evaluation, which counts it; a bag damaged part-way is its fault to report.
    """
    if truth.match != "stamp":
        return
    stamps = []
    try:
        for _, _, raw in reader.messages(connections=[image_conn]):
            if config.max_frames and len(stamps) >= config.max_frames:
                break
            try:
                stamp = typestore().deserialize_cdr(raw, image_conn.msgtype).header.stamp
            except Exception:  # noqa: BLE001 - malformed CDR raises assorted types; the evaluation names it
                continue
            stamps.append(stamp.sec * 1_000_000_000 + stamp.nanosec)
    except Exception:  # noqa: BLE001 - rosbags/apsw raise assorted types on damaged data mid-file
        return
    if not stamps or not truth.annotations.keys().isdisjoint(stamps):
        return
    labelled = sorted(truth.annotations)
    raise BagToolError(
        f"no annotation in ground-truth folder {config.ground_truth} matches a frame of {image_conn.topic}: its "
        f"{len(labelled)} files are named by header stamp ({labelled[0]}.xml .. {labelled[-1]}.xml) and the "
        f"{len(stamps)} frames read are stamped {min(stamps)} .. {max(stamps)} ns. Labels of another recording, or of "
        "an earlier make_bag run (each stamps from its --start-time-s, default now)? Use the --labels-out of the run "
        "that made this bag, or --gt-match index for one XML per frame in order"
    )
