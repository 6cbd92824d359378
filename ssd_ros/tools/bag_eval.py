"""Evaluate a detector checkpoint offline on a camera rosbag2 (MCAP or sqlite3), without a ROS graph.

Every frame of the image topic goes through the live ``detector`` node's path: the same message
decoding (:mod:`ssd_ros.ros.images`), the same :class:`~ssd_ros.vision.detector.Detector`, the same
``Detection2DArray`` conversion (:mod:`ssd_ros.ros.messages`) and drawing. The follower's commands are
computed with the same :class:`~ssd_ros.control.follow.FollowLoop` as the node, ticked at ``--control-rate-hz`` on
bag time. Nothing is dropped and nothing depends on wall time, so a run is reproducible.

The output bag holds the input's topics (the image topic untouched) plus ``/detections``
(header = image header), ``/image_annotated`` (rgb8) and ``/cmd_vel``, all at the image's bag time,
for replay in RViz or Foxglove. The report (Markdown on stdout, JSON in the output folder) gives
frames, processing rate, per-frame model latency percentiles, detections per class, the tracker's tracks
(``Detection2D.id`` in the output, as the node's ``tracking`` writes it; ``--no-tracking`` leaves them empty)
and, with ``--ground-truth``, the PASCAL VOC AP table. See ``docs/bags.md``.

Exit status: 0 done; 1 the bag is damaged (what was read before the fault is evaluated and written);
2 bad input (missing bag or topic, ambiguous topic, bad checkpoint or ground truth).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from std_msgs.msg import Header
from tqdm import tqdm

from ssd_ros.cli import add_inference_arguments, inference_kwargs, positive_int, read_params_file
from ssd_ros.control.camera import PinholeCamera
from ssd_ros.control.follow import Command, FollowLoop, FollowParams, class_mismatch
from ssd_ros.control.tracking import IdSwitchCounter, Tracker, TrackerParams, match_truth
from ssd_ros.evaluation.voc import VocAnnotation, VocFormatError, parse_annotation
from ssd_ros.evaluation.voc_metric import METRICS, evaluate_detections
from ssd_ros.evaluation.voc_report import format_ap_table
from ssd_ros.ros.images import compressed_msg_to_rgb, image_msg_to_rgb, rgb_to_image_msg
from ssd_ros.ros.messages import camera_from_info, detections_to_msg, stamp_ns, twist_msg
from ssd_ros.settings import settings_from_mapping
from ssd_ros.tools.bagio import (
    COMPRESSED_IMAGE_TYPE,
    IMAGE_TYPES,
    STORAGE_PLUGINS,
    BagToolError,
    add_topic,
    copy_connection,
    deserialize,
    open_bag,
    open_writer,
    serialize,
)
from ssd_ros.vision.checkpoint import CheckpointError
from ssd_ros.vision.detections import Detections
from ssd_ros.vision.detector import LIVE_SETTINGS, Detector
from ssd_ros.vision.drawing import draw_detections
from ssd_ros.vision.image_codec import ImageDecodeError

DETECTIONS_TOPIC = "/detections"
ANNOTATED_TOPIC = "/image_annotated"
CMD_VEL_TOPIC = "/cmd_vel"
MAX_LISTED_BAD_FRAMES = 20
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"


@dataclass
class Frame:
    """One image message of the bag and what became of it."""

    index: int  # position among the image topic's messages
    bag_ns: int  # the bag's (receive) timestamp
    raw: bytes
    header: Header | None = None
    rgb: np.ndarray | None = None
    detections: Detections | None = None
    error: str | None = None


@dataclass
class Stats:
    """What the report counts."""

    frames: int = 0
    bad_frames: list[dict] = field(default_factory=list)
    bad_frame_count: int = 0
    model_s: list[float] = field(default_factory=list)
    per_class: Counter = field(default_factory=Counter)
    commands: list[Command] = field(default_factory=list)
    track_frames: Counter = field(default_factory=Counter)  # track id -> frames it was detected in
    tracked_detections: int = 0
    evaluated: list[tuple[Detections, VocAnnotation]] = field(default_factory=list)


def find_image_topic(connections, topic: str | None):
    """The connection of ``topic``, or of the bag's only Image/CompressedImage topic."""
    images = [c for c in connections if c.msgtype in IMAGE_TYPES]
    listing = ", ".join(f"{c.topic} ({c.msgtype})" for c in images) or "none"
    if topic is not None:
        named = [c for c in connections if c.topic == topic]
        if not named:
            raise BagToolError(f"topic {topic!r} is not in the bag; image topics there: {listing}")
        if named[0].msgtype not in IMAGE_TYPES:
            raise BagToolError(f"topic {topic!r} is {named[0].msgtype}, not an image; image topics: {listing}")
        return named[0]
    if len({c.topic for c in images}) != 1:
        problem = "no image topic" if not images else "several image topics"
        raise BagToolError(f"{problem} in the bag (image topics: {listing}); name one with --topic")
    return images[0]


def find_camera_info(connections, topic: str | None, image_topic: str):
    """The CameraInfo connection of ``topic``, or of the image's sibling (``.../camera_info``), or None.

    A named topic that the bag lacks is an error; without a name, a bag without calibration is evaluated
    with the configured field of view, as the follower node would run.
    """
    named = topic is not None
    if not named:
        topic = image_topic.removesuffix("/compressed").rpartition("/")[0] + "/camera_info"
    found = [c for c in connections if c.topic == topic and c.msgtype == CAMERA_INFO_TYPE]
    if named and not found:
        raise BagToolError(f"--camera-info-topic {topic!r}: no {CAMERA_INFO_TYPE} on it in the bag")
    return found[0] if found else None


def load_ground_truth(folder: Path, match: str) -> tuple[str, dict]:
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


def read_follower_config(path: Path | None) -> dict:
    """The follower node's parameters from ``path`` (none: an empty mapping); see :func:`read_params_file`."""
    if path is None:
        return {}
    try:
        return read_params_file(path, "follower")
    except ValueError as exc:
        raise BagToolError(str(exc)) from exc


def follow_params(class_names, image_shape, config: dict, options: list[str], target_classes) -> FollowParams:
    """The follower's tuning for the bag, in increasing precedence.

    FollowParams defaults; the follower node's parameters ``config``; the bag's image size (the pixels
    the detections refer to, whatever the robot's file says); ``--follow-classes``;
    ``--follow-param name=value`` (values read as YAML: ``0.2``, ``true``, ``[Person, Stop Sign]``).
    """
    mapping = dict(config)
    mapping.update(image_height=int(image_shape[0]), image_width=int(image_shape[1]))
    if target_classes:
        unknown = [c for c in target_classes if c not in class_names]
        if unknown:
            raise BagToolError(f"--follow-classes {unknown} are not classes of the model {list(class_names)}")
        mapping["target_classes"] = list(target_classes)
    mapping.update(assignments(options, FollowParams, "--follow-param"))
    try:
        return settings_from_mapping(FollowParams, mapping)
    except ValueError as exc:
        raise BagToolError(f"follower parameters: {exc}") from exc


def assignments(options: list[str], settings_class, flag: str) -> dict:
    """The ``NAME=VALUE`` options ``flag`` gave, for fields of ``settings_class``; values read as YAML.

    ``BagToolError`` on an option that names no field; the values are converted and validated later, with the
    others, by :func:`~ssd_ros.settings.settings_from_mapping`.
    """
    known = sorted(f.name for f in dataclasses.fields(settings_class))
    mapping = {}
    for option in options:
        name, sep, text = option.partition("=")
        if not sep or name not in known:
            raise BagToolError(f"{flag} {option!r}: expected NAME=VALUE with NAME in {known}")
        mapping[name] = yaml.safe_load(text)
    return mapping


@dataclass(frozen=True)
class FollowerOptions:
    """How the follower node would run: its parameters file, timer rate and command type."""

    config: dict
    rate_hz: float
    twist_stamped: bool
    frame_id: str


class Evaluation:
    """Streams the bag through decode -> detector -> outputs; holds the writer connections and state."""

    def __init__(
        self,
        args,
        follower: FollowerOptions,
        reader,
        writer,
        detector: Detector,
        inputs,
        ground_truth,
        tracker: Tracker | None = None,
        gt_tracks=None,
    ):
        image_conn, self.camera_info_conn = inputs  # the image topic's connection and its CameraInfo's, or None
        self.args = args
        self.follower = follower
        self.detector = detector
        self.writer = writer
        self.image_conn = image_conn
        self.gt_mode, self.gt = ground_truth
        self.stats = Stats()
        self.follow_options = (follower.config, args.follow_param, args.follow_classes)
        self.decode = compressed_msg_to_rgb if image_conn.msgtype == COMPRESSED_IMAGE_TYPE else image_msg_to_rgb
        outputs = {DETECTIONS_TOPIC, CMD_VEL_TOPIC} | ({ANNOTATED_TOPIC} if args.annotated else set())
        # Recorded topics named like our outputs (a bag from the robot) would mix two sources: drop them.
        self.replaced = sorted({c.topic for c in reader.connections if c.topic in outputs})
        self.copies = {
            c.id: copy_connection(writer, c) for c in reader.connections if c.topic not in outputs or c is image_conn
        }
        self.detections_conn = add_topic(writer, DETECTIONS_TOPIC, "vision_msgs/msg/Detection2DArray")
        self.annotated_conn = add_topic(writer, ANNOTATED_TOPIC, "sensor_msgs/msg/Image") if args.annotated else None
        cmd_type = "geometry_msgs/msg/TwistStamped" if follower.twist_stamped else "geometry_msgs/msg/Twist"
        self.cmd_conn = add_topic(writer, CMD_VEL_TOPIC, cmd_type)
        self.loop: FollowLoop | None = None  # made at the first good frame (needs the image size)
        self.tracker = tracker  # None with --no-tracking
        self.gt_tracks = gt_tracks  # frame index -> (true object ids, boxes), from --gt-tracks
        self.id_switches = IdSwitchCounter()
        self.next_tick_ns: int | None = None
        self.period_ns = round(1e9 / follower.rate_hz)  # the follower node's timer period
        self.last_image_ns: int | None = None
        self.camera: PinholeCamera | None = None  # the bag's newest calibration, as the node would hold it
        self.bad_camera_infos = 0

    # -- per message ---------------------------------------------------------------------------------
    def flush(self, buffered: list) -> None:
        """Process the buffered images as one batch, then write everything buffered in bag order."""
        frames = [item for item in buffered if isinstance(item, Frame)]
        for frame in frames:
            self._decode(frame)
        good = [f for f in frames if f.error is None]
        if good:
            start = time.perf_counter()
            results = (
                self.detector.detect_batch([f.rgb for f in good]) if len(good) > 1 else [self.detector(good[0].rgb)]
            )
            per_frame = (time.perf_counter() - start) / len(good)
            for frame, detections in zip(good, results):
                frame.detections = detections
                self.stats.model_s.append(per_frame)
        for item in buffered:
            if isinstance(item, Frame):
                self._write_frame(item)
            else:
                connection, bag_ns, raw = item
                self._ticks_before(bag_ns)
                if self.camera_info_conn is not None and connection.id == self.camera_info_conn.id:
                    self._camera_info(raw)
                self.writer.write(self.copies[connection.id], bag_ns, raw)

    def _camera_info(self, raw: bytes) -> None:
        """Take the bag's calibration, as the follower node takes it from its camera_info_topic."""
        try:
            camera = camera_from_info(deserialize(raw, CAMERA_INFO_TYPE))
        except Exception:  # noqa: BLE001 - malformed CDR raises assorted types; no calibration is a ValueError
            self.bad_camera_infos += 1  # ignored, like the node does
            return
        self.camera = camera
        if self.loop is not None:
            self.loop.controller.measured_camera = camera

    def _decode(self, frame: Frame) -> None:
        self.stats.frames += 1
        try:
            msg = deserialize(frame.raw, self.image_conn.msgtype)
        except Exception as exc:  # rclpy raises assorted types on malformed CDR; one bad frame must not stop the run
            frame.error = f"cannot deserialize {self.image_conn.msgtype}: {exc}"
        else:
            frame.header = msg.header
            try:
                frame.rgb = self.decode(msg)
            except ImageDecodeError as exc:
                frame.error = str(exc)
        if frame.error is not None:
            self.stats.bad_frame_count += 1
            if len(self.stats.bad_frames) < MAX_LISTED_BAD_FRAMES:
                self.stats.bad_frames.append({"index": frame.index, "bag_ns": frame.bag_ns, "error": frame.error})

    def _write_frame(self, frame: Frame) -> None:
        self._ticks_before(frame.bag_ns)
        self.writer.write(self.copies[self.image_conn.id], frame.bag_ns, frame.raw)
        self.last_image_ns = frame.bag_ns
        if frame.detections is None:  # a bad frame: the live node drops it, so no outputs
            return
        detections = frame.detections
        if self.tracker is not None:  # as the node's tracking: ids in Detection2D.id, frames in bag order
            detections = frame.detections = self.tracker.update(detections, stamp_ns(frame.header) / 1e9)
            ids = [i for i in detections.track_ids if i]
            self.stats.track_frames.update(ids)
            self.stats.tracked_detections += len(ids)
            if self.gt_tracks is not None and frame.index in self.gt_tracks:
                truth_ids, truth_boxes = self.gt_tracks[frame.index]
                pairs = match_truth(truth_boxes, detections.boxes, self.args.iou)
                self.id_switches.add((truth_ids[t], detections.track_ids[d]) for t, d in pairs)
        self.stats.per_class.update(detections.names)
        self.writer.write(self.detections_conn, frame.bag_ns, serialize(detections_to_msg(detections, frame.header)))
        if self.annotated_conn is not None:
            annotated = rgb_to_image_msg(draw_detections(frame.rgb, detections), frame.header)
            self.writer.write(self.annotated_conn, frame.bag_ns, serialize(annotated))
        if self.loop is None:
            self.loop = FollowLoop(follow_params(self.detector.class_names, frame.rgb.shape, *self.follow_options))
            self.loop.controller.measured_camera = self.camera
            self.next_tick_ns = frame.bag_ns
        self.loop.offer(detections, stamp_ns(frame.header) / 1e9)
        self._ground_truth(frame)

    def _ground_truth(self, frame: Frame) -> None:
        if self.gt is None:
            return
        key = frame.index if self.gt_mode == "index" else stamp_ns(frame.header)
        annotation = self.gt.get(key)
        if annotation is not None:
            self.stats.evaluated.append((frame.detections, annotation))

    # -- follower --------------------------------------------------------------------------------------
    def _ticks_before(self, bag_ns: int, inclusive: bool = False) -> None:
        """Run the follower's timer ticks due before ``bag_ns`` (bag time is the clock)."""
        if self.loop is None:
            return
        while self.next_tick_ns < bag_ns or (inclusive and self.next_tick_ns == bag_ns):
            now_ns = self.next_tick_ns
            command = self.loop.tick(now_ns / 1e9)
            self.stats.commands.append(command)
            twist = twist_msg(command, self.follower.twist_stamped, self.follower.frame_id, now_ns)
            self.writer.write(self.cmd_conn, now_ns, serialize(twist))
            self.next_tick_ns += self.period_ns

    def finish(self) -> None:
        """Ticks up to and including the last image's time."""
        if self.last_image_ns is not None:
            self._ticks_before(self.last_image_ns, inclusive=True)


def tracker_from_args(args) -> Tracker | None:
    """The tracker ``--track-param NAME=VALUE`` tunes (the detector node's track_* parameters), or None."""
    if not args.tracking:
        return None
    changes = assignments(args.track_param, TrackerParams, "--track-param")
    try:
        return Tracker(settings_from_mapping(TrackerParams, changes))
    except ValueError as exc:
        raise BagToolError(f"tracker parameters: {exc}") from exc


def load_detector(args) -> Detector:
    """The detector the command line describes, built as the detector node builds it (the one place bag_eval does)."""
    try:
        detector = Detector.from_checkpoint(
            args.checkpoint,
            score_threshold=args.score_threshold,
            nms_iou=args.nms_iou,
            max_detections=args.max_detections,
            device=args.device,
            **inference_kwargs(args),
        )
    except (CheckpointError, ValueError) as exc:  # ValueError: a backend/precision/device that cannot run
        raise BagToolError(str(exc)) from exc
    try:
        detector.class_filter = args.class_filter
    except ValueError as exc:
        raise BagToolError(f"--class-filter: {exc}") from exc
    return detector


def follower_options(args, class_names) -> FollowerOptions:
    """How the follower node would run, from ``--follow-config`` and the options; bad values fail here."""
    config = read_follower_config(args.follow_config)
    follower = FollowerOptions(
        config=config,
        rate_hz=args.control_rate_hz or float(config.get("rate_hz", 20.0)),
        twist_stamped=args.twist_stamped or bool(config.get("twist_stamped", False)),
        frame_id=str(config.get("cmd_frame_id", "base_link")),
    )
    if not follower.rate_hz > 0:
        raise BagToolError(f"the follower's rate must be > 0 Hz, got {follower.rate_hz}")
    # The real image size is known only at the first frame; any size checks the rest now.
    targets = follow_params(class_names, (480, 640), config, args.follow_param, args.follow_classes)
    problem = class_mismatch(targets.target_classes, class_names, "the checkpoint's classes")
    if problem:
        print(f"bag_eval: warning: follower {problem}; choose with --follow-classes", file=sys.stderr)
    return follower


def check_ground_truth(args, ground_truth, class_names, image_conn, salvaged: bool) -> None:
    """Refuse annotations the evaluation could not use: unknown classes, or a count that cannot match by index."""
    mode, annotations = ground_truth
    if not annotations:
        return
    unknown = sorted({name for ann in annotations.values() for name in ann.names} - set(class_names))
    if unknown:
        raise BagToolError(
            f"ground-truth classes {unknown} in {args.ground_truth} are not classes of the checkpoint "
            f"{list(class_names)}"
        )
    # A salvaged bag's count is what survived, not what the annotations were made for.
    if mode == "index" and not salvaged and image_conn.msgcount and image_conn.msgcount != len(annotations):
        raise BagToolError(
            f"{len(annotations)} annotations in {args.ground_truth} for {image_conn.msgcount} frames on "
            f"{image_conn.topic}: index matching needs one XML per frame (or name them <stamp_ns>.xml)"
        )


def stream(args, evaluation: Evaluation, reader, image_conn) -> tuple[float, str | None]:
    """Feed the bag through ``evaluation`` in batches; returns the wall time and the fault that ended it early."""
    total = image_conn.msgcount or None
    if args.max_frames:
        total = min(total or args.max_frames, args.max_frames)
    progress = tqdm(total=total, unit="frame", desc="bag_eval", disable=args.quiet)
    start = time.perf_counter()
    messages = reader.messages(connections=[c for c in reader.connections if c.id in evaluation.copies])
    buffered, images, fault = [], 0, None
    while True:
        try:
            connection, bag_ns, raw = next(messages)
        except StopIteration:
            break
        except Exception as exc:  # rosbags/apsw raise assorted types on damaged data mid-file
            fault = f"bag {args.bag} is damaged after {images} frames: {type(exc).__name__}: {exc}"
            break
        if connection.id == image_conn.id:
            if args.max_frames and images >= args.max_frames:
                break
            buffered.append(Frame(images, bag_ns, raw))
            images += 1
            progress.update()
            if images % args.batch_size == 0:
                evaluation.flush(buffered)
                buffered = []
        else:
            buffered.append((connection, bag_ns, raw))
    evaluation.flush(buffered)
    evaluation.finish()
    progress.close()
    return time.perf_counter() - start, fault


def run(args) -> tuple[dict, int]:
    """Evaluate ``args.bag``; returns the JSON report and the exit status.

    Cheap checks come first (ground truth, the bag and its image topic), so a wrong path fails before
    the model is loaded.
    """
    ground_truth = load_ground_truth(args.ground_truth, args.gt_match) if args.ground_truth else (None, None)
    if args.gt_tracks and not args.tracking:
        raise BagToolError("--gt-tracks counts the tracker's id switches: it cannot go with --no-tracking")
    gt_tracks = load_gt_tracks(args.gt_tracks) if args.gt_tracks else None
    out = args.out or args.bag.with_name(args.bag.stem + "_eval")
    with open_bag(args.bag) as (reader, salvage_note):
        image_conn = find_image_topic(reader.connections, args.topic)
        camera_info_conn = find_camera_info(reader.connections, args.camera_info_topic, image_conn.topic)
        detector = load_detector(args)
        follower = follower_options(args, detector.class_names)
        tracker = tracker_from_args(args)  # a bad --track-param fails before any output
        check_ground_truth(args, ground_truth, detector.class_names, image_conn, bool(salvage_note))
        with open_writer(out, args.storage) as writer:
            detector.warmup()  # one-time set-up cost stays out of the latency figures
            inputs = (image_conn, camera_info_conn)
            evaluation = Evaluation(args, follower, reader, writer, detector, inputs, ground_truth, tracker, gt_tracks)
            wall_s, fault = stream(args, evaluation, reader, image_conn)
    fault = "; ".join(note for note in (salvage_note, fault) if note) or None
    report = make_report(args, out, detector, image_conn, evaluation, wall_s, fault)
    return report, 1 if fault else 0


def _percentiles_ms(values: list[float]) -> dict:
    if not values:
        return {}
    ms = np.asarray(values) * 1e3
    return {
        "mean": float(ms.mean()),
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
        "max": float(ms.max()),
    }


def make_report(args, out: Path, detector: Detector, image_conn, evaluation: Evaluation, wall_s: float, fault):
    """The JSON-ready report of a run."""
    stats = evaluation.stats
    commands = stats.commands
    report = {
        "bag": str(args.bag),
        "output_bag": str(out),
        "image_topic": image_conn.topic,
        "image_type": image_conn.msgtype,
        "checkpoint": str(args.checkpoint),
        "architecture": detector.card.architecture,
        "device": str(detector.device),
        "backend": f"{detector.backend} {detector.precision} x{detector.num_threads} threads",
        "class_names": list(detector.class_names),
        "score_threshold": detector.score_threshold,
        "batch_size": args.batch_size,
        "frames": stats.frames,
        "processed_frames": stats.frames - stats.bad_frame_count,
        "bad_frames": stats.bad_frame_count,
        "bad_frame_examples": stats.bad_frames,
        "wall_s": wall_s,
        "frames_per_s": stats.frames / wall_s if wall_s > 0 else None,
        "model_latency_ms": _percentiles_ms(stats.model_s),
        "model_frames_per_s": len(stats.model_s) / sum(stats.model_s) if stats.model_s else None,
        "detections": sum(stats.per_class.values()),
        "detections_per_class": {name: stats.per_class.get(name, 0) for name in detector.class_names},
        "cmd_vel": {
            "messages": len(commands),
            "control_rate_hz": evaluation.follower.rate_hz,
            "type": evaluation.cmd_conn.msgtype,
            "moving": sum(1 for c in commands if c.linear_mps != 0.0 or c.angular_radps != 0.0),
            "max_abs_linear_mps": max((abs(c.linear_mps) for c in commands), default=0.0),
            "max_abs_angular_radps": max((abs(c.angular_radps) for c in commands), default=0.0),
            "follower_counters": dict(evaluation.loop.controller.counters) if evaluation.loop else {},
            "camera": _camera_report(evaluation),
        },
        "tracking": _tracking_report(evaluation),
        "replaced_topics": evaluation.replaced,
        "ground_truth": None,
        "fault": fault,
    }
    if args.ground_truth:
        pairs = stats.evaluated
        result = evaluate_detections(
            [d for d, _ in pairs],
            [a for _, a in pairs],
            detector.class_names,
            iou_threshold=args.iou,
            metric=args.metric,
        )
        report["ground_truth"] = {
            "folder": str(args.ground_truth),
            "match": evaluation.gt_mode,
            "annotations": len(evaluation.gt),
            "frames_evaluated": len(pairs),
            **result.to_dict(),
        }
        report["ap_table"] = format_ap_table(result)
    return report


def _tracking_report(evaluation: Evaluation) -> dict | None:
    """Tracks (confirmed ids), their lengths in frames and the share of detections with an id; None untracked."""
    if evaluation.tracker is None:
        return None
    stats = evaluation.stats
    lengths = sorted(stats.track_frames.values())
    detections = sum(stats.per_class.values())
    return {
        "params": dataclasses.asdict(evaluation.tracker.params),
        "tracks": len(lengths),
        "track_length_frames": {
            "mean": float(np.mean(lengths)) if lengths else 0.0,
            "median": float(np.median(lengths)) if lengths else 0.0,
            "max": lengths[-1] if lengths else 0,
        },
        "tracked_detections": stats.tracked_detections,
        "tracked_fraction": stats.tracked_detections / detections if detections else 0.0,
        "ground_truth": None if evaluation.gt_tracks is None else _gt_tracks_report(evaluation),
    }


def _gt_tracks_report(evaluation: Evaluation) -> dict:
    """Identity switches against ``--gt-tracks`` (true objects matched at ``--iou`` to detections with an id)."""
    truth = evaluation.gt_tracks
    return {
        "file": str(evaluation.args.gt_tracks),
        "objects": len({o for ids, _ in truth.values() for o in ids}),
        "boxes": sum(len(ids) for ids, _ in truth.values()),
        "matched_with_id": evaluation.id_switches.matched,
        "id_switches": evaluation.id_switches.switches,
    }


def _camera_report(evaluation: Evaluation) -> dict:
    """Which camera model the follower's bearing came from (the last one in use)."""
    camera = evaluation.loop.controller.camera if evaluation.loop else None
    info = evaluation.camera_info_conn
    return {
        "source": "CameraInfo" if evaluation.camera is not None else "configured field of view",
        "camera_info_topic": info.topic if info is not None else None,
        "bad_camera_infos": evaluation.bad_camera_infos,
        **({"width_px": camera.width_px, "height_px": camera.height_px} if camera else {}),
        **({"fx_px": camera.fx_px, "cx_px": camera.cx_px} if camera else {}),
    }


def format_report(report: dict) -> str:
    """The report as Markdown."""

    def number(value, fmt=".1f"):
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

    latency = report["model_latency_ms"]
    lines = [
        f"# bag_eval: {report['bag']}",
        "",
        f"- image topic: `{report['image_topic']}` ({report['image_type']})",
        f"- model: {report['architecture']} from `{report['checkpoint']}` on {report['device']} "
        f"({report['backend']}), "
        f"score threshold {report['score_threshold']:g}, batch {report['batch_size']}",
        f"- output bag: `{report['output_bag']}`",
        f"- frames: {report['frames']} ({report['processed_frames']} processed, {report['bad_frames']} bad)",
        f"- processing rate: {number(report['frames_per_s'])} frames/s overall "
        f"(model alone {number(report['model_frames_per_s'])} frames/s) in {report['wall_s']:.2f} s",
    ]
    if latency:
        lines.append(
            "- model latency per frame (ms): "
            + ", ".join(f"{k} {latency[k]:.1f}" for k in ("mean", "p50", "p90", "p99", "max"))
        )
    cmd = report["cmd_vel"]
    lines.append(
        f"- /cmd_vel: {cmd['messages']} commands at {cmd['control_rate_hz']:g} Hz, {cmd['moving']} non-zero, "
        f"max |linear| {cmd['max_abs_linear_mps']:.3f} m/s, max |angular| {cmd['max_abs_angular_radps']:.3f} rad/s"
    )
    camera = cmd["camera"]
    if "fx_px" in camera:
        lines.append(
            f"- follower bearing from the {camera['source']}: {camera['width_px']}x{camera['height_px']} px, "
            f"fx {camera['fx_px']:.1f} px, cx {camera['cx_px']:.1f} px"
        )
    tracking = report["tracking"]
    if tracking is not None:
        length = tracking["track_length_frames"]
        lines.append(
            f"- tracks: {tracking['tracks']} (length in frames: mean {length['mean']:.1f}, median "
            f"{length['median']:.0f}, max {length['max']}); {tracking['tracked_detections']} detections "
            f"({100 * tracking['tracked_fraction']:.0f} %) carry a track id"
        )
        truth = tracking["ground_truth"]
        if truth is not None:
            lines.append(
                f"- id switches against `{truth['file']}`: {truth['id_switches']} ({truth['objects']} objects, "
                f"{truth['matched_with_id']} of {truth['boxes']} boxes matched to a tracked detection)"
            )
    if report["replaced_topics"]:
        lines.append(f"- recorded topics replaced by this evaluation: {', '.join(report['replaced_topics'])}")
    for bad in report["bad_frame_examples"]:
        lines.append(f"- bad frame {bad['index']} (bag time {bad['bag_ns']} ns): {bad['error']}")
    if report["fault"]:
        lines += ["", f"**Error:** {report['fault']}"]
    lines += [
        "",
        f"## Detections per class ({report['detections']} in total)",
        "",
        "| Class | Detections |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {count} |" for name, count in report["detections_per_class"].items()]
    if report["ground_truth"] is not None:
        gt = report["ground_truth"]
        lines += [
            "",
            f"## VOC AP ({gt['frames_evaluated']} frames with ground truth, matched by {gt['match']})",
            "",
            report["ap_table"],
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line of ``bag_eval``."""
    parser = argparse.ArgumentParser(prog="bag_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("bag", type=Path, help="input rosbag2 folder, or a single .mcap / .db3 file")
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="SSD checkpoint (.pt) or export (.onnx, OpenVINO .xml)"
    )
    parser.add_argument("--topic", help="image topic (default: the bag's only Image/CompressedImage topic)")
    parser.add_argument("--out", type=Path, help="output bag folder, must not exist (default: <bag>_eval)")
    parser.add_argument("--storage", choices=sorted(STORAGE_PLUGINS), default="mcap", help="output storage format")
    parser.add_argument("--report", type=Path, help="JSON report path (default: <out>/bag_eval_report.json)")
    same = "as the detector node (default %(default)s)"
    parser.add_argument("--score-threshold", type=float, default=LIVE_SETTINGS["score_threshold"], help=same)
    parser.add_argument("--nms-iou", type=float, default=LIVE_SETTINGS["nms_iou"], help=same)
    parser.add_argument("--max-detections", type=int, default=LIVE_SETTINGS["max_detections"], help=same)
    parser.add_argument("--class-filter", nargs="+", help="report only these classes")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    add_inference_arguments(parser)
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        help="frames per model call (1 = exactly the node's per-frame call)",
    )
    parser.add_argument("--max-frames", type=positive_int, help="stop after this many frames")
    parser.add_argument("--no-annotated", dest="annotated", action="store_false", help=f"skip {ANNOTATED_TOPIC}")
    parser.add_argument(
        "--control-rate-hz", type=float, help="follower timer rate on bag time (default: rate_hz of the config, or 20)"
    )
    parser.add_argument(
        "--follow-config", type=Path, help="the follower node's parameters file, e.g. config/follower.yaml"
    )
    parser.add_argument("--follow-classes", nargs="+", help="classes the follower follows (default: FollowParams)")
    parser.add_argument(
        "--camera-info-topic",
        help="the follower's sensor_msgs/CameraInfo (default: camera_info next to the image topic, if the bag has it)",
    )
    parser.add_argument(
        "--follow-param", action="append", default=[], metavar="NAME=VALUE", help="override a FollowParams field"
    )
    parser.add_argument(
        "--twist-stamped", action="store_true", help="write TwistStamped (default: twist_stamped of the config)"
    )
    parser.add_argument(
        "--no-tracking", dest="tracking", action="store_false", help="no tracker: Detection2D.id left empty"
    )
    parser.add_argument(
        "--track-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="tracker setting, as the detector node's track_* parameters (e.g. track_high_score=0.4)",
    )
    parser.add_argument(
        "--gt-tracks",
        type=Path,
        help="ground-truth tracks (MOTChallenge text: frame from 1, id, left, top, width, height): id switches",
    )
    parser.add_argument("--ground-truth", type=Path, help="folder of VOC XML annotations, one per frame")
    parser.add_argument(
        "--gt-match",
        choices=["auto", "index", "stamp"],
        default="auto",
        help="index: sorted XML files are frames 0, 1, ...; stamp: <stamp_ns>.xml; auto: stamp if all are numbers",
    )
    parser.add_argument("--metric", choices=METRICS, default="11point", help="VOC AP interpolation")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU threshold of a true positive")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bag_eval`` executable; returns the exit status."""
    args = parse_args(argv)
    try:
        report, status = run(args)
    except BagToolError as exc:
        print(f"bag_eval: error: {exc}", file=sys.stderr)
        return 2
    report_path = args.report or Path(report["output_bag"]) / "bag_eval_report.json"
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print(f"\nreport: {report_path}")
    if report["fault"]:
        print(f"bag_eval: error: {report['fault']}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
