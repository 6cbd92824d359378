"""The bag streamed through the live nodes' path, on bag time: decode, detect, track, write, follow, score.

Every frame of the image topic goes through the ``detector`` node's path: the same message decoding
(:mod:`ssd_ros.ros.images`), the same :class:`~ssd_ros.vision.detector.Detector`, the same
``Detection2DArray`` conversion (:mod:`ssd_ros.ros.messages`) and drawing. The follower's commands come
from the same :class:`~ssd_ros.control.follow.FollowLoop` as the node's, ticked at its rate on bag time.
A frame's annotated image is drawn once the follower has decided on it (the tick after it), marking the
target it chose there and its state. Nothing is dropped and nothing depends on wall time, so a run is
reproducible.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from std_msgs.msg import Header
from tqdm import tqdm

from ssd_ros.control.camera import PinholeCamera
from ssd_ros.control.follow import Command, FollowLoop
from ssd_ros.control.tracking import IdSwitchCounter, Tracker, match_truth
from ssd_ros.evaluation.voc import VocAnnotation
from ssd_ros.ros.images import compressed_msg_to_rgb, image_msg_to_rgb, rgb_to_image_msg
from ssd_ros.ros.messages import camera_from_info, detections_to_msg, stamp_ns, twist_msg
from ssd_ros.tools.bag_eval.config import EvalConfig, FollowerOptions, follow_params
from ssd_ros.tools.bag_eval.ground_truth import GroundTruth
from ssd_ros.tools.bagio import (
    COMPRESSED_IMAGE_TYPE,
    IMAGE_TYPES,
    BagToolError,
    add_topic,
    copy_connection,
    deferred_interrupt,
    deserialize,
    serialize,
)
from ssd_ros.vision.detections import Detections
from ssd_ros.vision.detector import Detector
from ssd_ros.vision.drawing import FollowMark, draw_detections
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


class Evaluation:
    """Streams the bag through decode -> detector -> outputs; holds the writer connections and state."""

    def __init__(
        self,
        config: EvalConfig,
        follower: FollowerOptions,
        reader,
        writer,
        detector: Detector,
        inputs,
        truth: GroundTruth,
        tracker: Tracker | None = None,
    ):
        image_conn, self.camera_info_conn = inputs  # the image topic's connection and its CameraInfo's, or None
        self.config = config
        self.follower = follower
        self.detector = detector
        self.writer = writer
        self.image_conn = image_conn
        self.truth = truth
        self.stats = Stats()
        self.decode = compressed_msg_to_rgb if image_conn.msgtype == COMPRESSED_IMAGE_TYPE else image_msg_to_rgb
        outputs = {DETECTIONS_TOPIC, CMD_VEL_TOPIC} | ({ANNOTATED_TOPIC} if config.annotated else set())
        # Recorded topics named like our outputs (a bag from the robot) would mix two sources: drop them.
        self.replaced = sorted({c.topic for c in reader.connections if c.topic in outputs})
        self.copies = {
            c.id: copy_connection(writer, c) for c in reader.connections if c.topic not in outputs or c is image_conn
        }
        self.detections_conn = add_topic(writer, DETECTIONS_TOPIC, "vision_msgs/msg/Detection2DArray")
        self.annotated_conn = add_topic(writer, ANNOTATED_TOPIC, "sensor_msgs/msg/Image") if config.annotated else None
        cmd_type = "geometry_msgs/msg/TwistStamped" if follower.twist_stamped else "geometry_msgs/msg/Twist"
        self.cmd_conn = add_topic(writer, CMD_VEL_TOPIC, cmd_type)
        self.undrawn: tuple[Frame, Detections] | None = None  # offered to the follower, drawn after its tick
        self.loop: FollowLoop | None = None  # made at the first good frame (needs the image size)
        self.tracker = tracker  # None with --no-tracking
        self.id_switches = IdSwitchCounter()
        self.next_tick_ns: int | None = None
        self.period_ns = round(1e9 / follower.rate_hz)  # the follower node's timer period
        self.last_image_ns: int | None = None
        self.camera: PinholeCamera | None = None  # the bag's newest calibration, as the node would hold it
        self.bad_camera_infos = 0

    # -- per batch -------------------------------------------------------------------------------------
    def flush(self, buffered: list) -> None:
        """Process the buffered images as one batch, then write everything buffered in bag order."""
        frames = [item for item in buffered if isinstance(item, Frame)]
        for frame in frames:
            self._decode(frame)
        self._detect([f for f in frames if f.error is None])
        for item in buffered:
            if isinstance(item, Frame):
                self._replay_frame(item)
            else:
                connection, bag_ns, raw = item
                self._ticks_before(bag_ns)
                if self.camera_info_conn is not None and connection.id == self.camera_info_conn.id:
                    self._camera_info(raw)
                self.writer.write(self.copies[connection.id], bag_ns, raw)

    def _decode(self, frame: Frame) -> None:
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

    def _detect(self, good: list[Frame]) -> None:
        """One model call for the decoded frames (the node's own per-frame call for one), timed per frame."""
        if not good:
            return
        start = time.perf_counter()
        results = self.detector.detect_batch([f.rgb for f in good]) if len(good) > 1 else [self.detector(good[0].rgb)]
        per_frame = (time.perf_counter() - start) / len(good)
        for frame, detections in zip(good, results):
            frame.detections = detections
            self.stats.model_s.append(per_frame)

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

    # -- per frame, in bag order -----------------------------------------------------------------------
    def _replay_frame(self, frame: Frame) -> None:
        """The image copied; for a good frame, its tracked detections written, followed and scored."""
        self._ticks_before(frame.bag_ns)
        self.writer.write(self.copies[self.image_conn.id], frame.bag_ns, frame.raw)
        self.last_image_ns = frame.bag_ns
        # Counted once written: the report covers exactly the output bag, also when Ctrl-C cut a batch short.
        self.stats.frames += 1
        if frame.error is not None:  # a bad frame: the live node drops it, so no outputs
            self.stats.bad_frame_count += 1
            if len(self.stats.bad_frames) < MAX_LISTED_BAD_FRAMES:
                self.stats.bad_frames.append({"index": frame.index, "bag_ns": frame.bag_ns, "error": frame.error})
            return
        if self.tracker is not None:
            self._track(frame)
        self.stats.per_class.update(frame.detections.names)
        self._write_detections(frame)
        self._follow(frame)
        self._score(frame)

    def _track(self, frame: Frame) -> None:
        """Track ids into the detections, as the node's ``tracking`` does (frames in bag order); count switches."""
        detections = frame.detections = self.tracker.update(frame.detections, stamp_ns(frame.header) / 1e9)
        ids = [i for i in detections.track_ids if i]
        self.stats.track_frames.update(ids)
        self.stats.tracked_detections += len(ids)
        tracks = self.truth.tracks
        if tracks is not None and frame.index in tracks:
            truth_ids, truth_boxes = tracks[frame.index]
            pairs = match_truth(truth_boxes, detections.boxes, self.config.iou)
            self.id_switches.add((truth_ids[t], detections.track_ids[d]) for t, d in pairs)

    def _write_detections(self, frame: Frame) -> None:
        """``/detections`` with the image's header."""
        message = detections_to_msg(frame.detections, frame.header)
        self.writer.write(self.detections_conn, frame.bag_ns, serialize(message))

    def _draw(self) -> None:
        """The offered frame's annotated image (unless ``--no-annotated``), with the follower's target and state now."""
        if self.undrawn is None:
            return
        (frame, detections), self.undrawn = self.undrawn, None
        controller = self.loop.controller
        mark = FollowMark(controller.status, controller.target.track_id if controller.target else "")
        annotated = rgb_to_image_msg(draw_detections(frame.rgb, detections, follow=mark), frame.header)
        self.writer.write(self.annotated_conn, frame.bag_ns, serialize(annotated))

    def _follow(self, frame: Frame) -> None:
        """Offer the detections to the follower (made at the first good frame, which gives the image size)."""
        if self.loop is None:
            node_config = self.follower.config
            self.loop = FollowLoop(follow_params(self.config, self.detector.class_names, frame.rgb.shape, node_config))
            self.loop.controller.measured_camera = self.camera
            self.next_tick_ns = frame.bag_ns
        self._draw()  # a frame replaced before any tick was never decided on: drawn with the state it met
        offered = self.loop.offer(frame.detections, stamp_ns(frame.header) / 1e9)  # with the loop's ids, if own
        if self.annotated_conn is not None:
            self.undrawn = (frame, offered)

    def _score(self, frame: Frame) -> None:
        """Keep the detections with the frame's annotation, for the AP table."""
        annotation = self.truth.annotation(frame.index, stamp_ns(frame.header))
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
            self._draw()

    def finish(self) -> None:
        """Ticks up to and including the last image's time; the last frame drawn."""
        if self.last_image_ns is not None:
            self._ticks_before(self.last_image_ns, inclusive=True)
        if self.loop is not None:
            self._draw()


def stream(config: EvalConfig, evaluation: Evaluation, reader, image_conn) -> tuple[float, str | None, bool]:
    """Feed the bag through ``evaluation`` in batches.

    Returns the wall time, the fault that ended it early and whether that was Ctrl-C: an interrupted run finishes
    the batch at hand and the follower's ticks and closes the output bag, and its report says how far it got.
    """
    total = image_conn.msgcount or None
    if config.max_frames:
        total = min(total or config.max_frames, config.max_frames)
    progress = tqdm(total=total, unit="frame", desc="bag_eval", disable=config.quiet)
    start = time.perf_counter()
    messages = reader.messages(connections=[c for c in reader.connections if c.id in evaluation.copies])
    buffered, images, fault, interrupted = [], 0, None, False
    with deferred_interrupt() as interrupt:
        while True:
            if interrupt.is_set():
                interrupted = True
                break
            try:
                connection, bag_ns, raw = next(messages)
            except StopIteration:
                break
            except Exception as exc:  # rosbags/apsw raise assorted types on damaged data mid-file
                fault = f"bag {config.bag} is damaged after {images} frames: {type(exc).__name__}: {exc}"
                break
            if connection.id == image_conn.id:
                if config.max_frames and images >= config.max_frames:
                    break
                buffered.append(Frame(images, bag_ns, raw))
                images += 1
                progress.update()
                if images % config.batch_size == 0:
                    evaluation.flush(buffered)
                    buffered = []
            else:
                buffered.append((connection, bag_ns, raw))
        evaluation.flush(buffered)
    if interrupted:
        fault = (
            f"interrupted (Ctrl-C) after {evaluation.stats.frames} frames of {image_conn.topic}: the output bag and "
            "this report cover only those"
        )
    evaluation.finish()
    progress.close()
    return time.perf_counter() - start, fault, interrupted
