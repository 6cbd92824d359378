"""Conversions between core types and ROS messages (vision_msgs semantics, no model logic)."""

from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Twist, TwistStamped
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header
from vision_msgs.msg import Detection2D, Detection2DArray, LabelInfo, ObjectHypothesisWithPose, VisionClass

from ssd_ros.control.camera import PinholeCamera
from ssd_ros.control.follow import Command
from ssd_ros.vision.detections import Detections

# A "latched" topic (ROS 1 wording): the last message is kept for subscribers that join later, such as
# label_info or the base's state. Publisher and subscriber must both use it to be matched.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def detections_to_msg(detections: Detections, header: Header) -> Detection2DArray:
    """Detection2DArray whose header (and every Detection2D's) is the source image header.

    Boxes become centre/size in image pixels; ``class_id`` is the class name, ``score`` in [0, 1]; ``id`` is the
    tracker's id of the detection ("" when untracked, see :mod:`ssd_ros.control.tracking`).
    """
    msg = Detection2DArray(header=header)
    rows = zip(detections.boxes.tolist(), detections.scores.tolist(), detections.names, detections.ids)
    for box, score, name, track_id in rows:
        x1, y1, x2, y2 = box
        det = Detection2D(header=header, id=track_id)
        det.bbox.center.position.x = (x1 + x2) / 2.0
        det.bbox.center.position.y = (y1 + y2) / 2.0
        det.bbox.size_x = x2 - x1
        det.bbox.size_y = y2 - y1
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = name
        hypothesis.hypothesis.score = float(score)
        det.results.append(hypothesis)
        msg.detections.append(det)
    return msg


def stamp_ns(header) -> int:
    """A header stamp in integer nanoseconds (plain arithmetic: rclpy's ``Time`` refuses negative stamps)."""
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def stamp_msg(ns: int) -> TimeMsg:
    """The stamp of ``ns`` integer nanoseconds; the inverse of :func:`stamp_ns`, negative times included."""
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return TimeMsg(sec=sec, nanosec=nanosec)


def twist_msg(command: Command, stamped: bool = False, frame_id: str = "", now_ns: int = 0) -> Twist | TwistStamped:
    """``command`` as a Twist, or as a TwistStamped in ``frame_id`` stamped ``now_ns``."""
    twist = Twist()
    twist.linear.x = float(command.linear_mps)
    twist.angular.z = float(command.angular_radps)
    if not stamped:
        return twist
    return TwistStamped(header=Header(stamp=stamp_msg(now_ns), frame_id=frame_id), twist=twist)


def twist_to_command(msg: Twist | TwistStamped) -> Command:
    """The (linear.x, angular.z) pair of a Twist or TwistStamped; the other components mean nothing to a car."""
    twist = msg.twist if isinstance(msg, TwistStamped) else msg
    return Command(twist.linear.x, twist.angular.z)


# Far beyond any image, far below float32's range.
MAX_COORDINATE_PX = 1e7


def msg_to_detections(msg: Detection2DArray) -> Detections:
    """Detections from a Detection2DArray, one per (detection, best hypothesis), with the ``id`` as track id.

    Detections without results, with non-finite or absurd numbers (a score outside [0, 1], a negative
    size, a coordinate beyond ``MAX_COORDINATE_PX``) are dropped: a malformed message from another node
    must never reach the control law as NaN, inf or a certainty above 1.
    """
    boxes, scores, names, ids = [], [], [], []
    for det in msg.detections:
        if not det.results:
            continue
        best = max(det.results, key=lambda r: r.hypothesis.score)
        cx, cy = det.bbox.center.position.x, det.bbox.center.position.y
        w, h = det.bbox.size_x, det.bbox.size_y
        score = best.hypothesis.score
        values = (cx, cy, w, h, score)
        if not all(math.isfinite(v) for v in values) or w < 0 or h < 0 or not 0.0 <= score <= 1.0:
            continue
        if max(abs(cx), abs(cy), w, h) > MAX_COORDINATE_PX:  # would overflow the float32 boxes
            continue
        boxes.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        scores.append(best.hypothesis.score)
        names.append(best.hypothesis.class_id)
        ids.append(det.id)
    if not boxes:
        return Detections.empty()
    # Ids only when some detection carries one: a detector without tracking leaves them all empty.
    return Detections.from_named(np.array(boxes), np.array(scores), names, ids if any(ids) else None)


def label_info_msg(class_names: tuple[str, ...], threshold: float, header: Header) -> LabelInfo:
    """The detector's class map: ``class_id`` = index in the checkpoint's class list."""
    return LabelInfo(
        header=header,
        class_map=[VisionClass(class_id=i, class_name=name) for i, name in enumerate(class_names)],
        threshold=float(threshold),
    )


def camera_info_msg(camera: PinholeCamera, header: Header) -> CameraInfo:
    """The calibration of ``camera``: its camera matrix and its distortion (``plumb_bob`` with zeros: none)."""
    fx, fy, cx, cy = float(camera.fx_px), float(camera.fy_px), float(camera.cx_px), float(camera.cy_px)
    return CameraInfo(
        header=header,
        width=camera.width_px,
        height=camera.height_px,
        distortion_model=camera.distortion_model or "plumb_bob",
        d=list(camera.distortion) or [0.0] * 5,
        k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
        r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        p=[fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
    )


def camera_from_info(msg: CameraInfo) -> PinholeCamera:
    """The camera model of the image a CameraInfo describes; ``ValueError`` when it holds no usable calibration.

    Uses the raw camera matrix K and the distortion (the detector sees the unrectified ``image_raw``); an unknown
    ``distortion_model`` or a wrong number of coefficients in ``d`` is a ``ValueError`` naming them (see
    :class:`~ssd_ros.control.camera.PinholeCamera`). Binning and a region of interest make the published image a
    part of the calibrated one, scaled down (REP 104): the intrinsics are mapped into that image; the distortion,
    in normalised coordinates, stays as it is.
    """
    fx, cx, fy, cy = msg.k[0], msg.k[2], msg.k[4], msg.k[5]
    calibrated = all(math.isfinite(v) for v in (fx, cx, fy, cy)) and fx > 0 and fy > 0
    if not (calibrated and msg.width > 0 and msg.height > 0):
        raise ValueError(f"CameraInfo without a calibration (K = {list(msg.k)}, size {msg.width}x{msg.height})")
    binning_x, binning_y = max(msg.binning_x, 1), max(msg.binning_y, 1)
    roi = msg.roi
    width, height = (roi.width or msg.width) // binning_x, (roi.height or msg.height) // binning_y
    if width < 1 or height < 1:  # a binning larger than the region: no image a detection could lie in
        raise ValueError(
            f"CameraInfo whose binning {binning_x}x{binning_y} leaves no pixel of its {roi.width or msg.width}x"
            f"{roi.height or msg.height} image"
        )
    return PinholeCamera(
        width,
        height,
        fx / binning_x,
        (cx - roi.x_offset) / binning_x,
        fy / binning_y,
        (cy - roi.y_offset) / binning_y,
        msg.distortion_model,
        tuple(msg.d),
    )


def diagnostics_msg(
    node, what: str, level: bytes, message: str, hardware_id: str, values: dict[str, str]
) -> DiagnosticArray:
    """One node's ``/diagnostics`` report, named ``<fully qualified node name>: <what>``.

    The fully qualified name keeps the statuses of two namespaced cars apart on the shared topic.
    """
    status = DiagnosticStatus(
        level=level,
        name=f"{node.get_fully_qualified_name()}: {what}",
        message=message,
        hardware_id=hardware_id,
        values=[KeyValue(key=key, value=value) for key, value in values.items()],
    )
    array = DiagnosticArray(status=[status])
    array.header.stamp = node.get_clock().now().to_msg()
    return array
