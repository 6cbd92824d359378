"""Message conversions: what a malformed Detection2DArray may not smuggle in; stamps and velocity commands."""

import math

import pytest
from geometry_msgs.msg import Twist, TwistStamped
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

from ssd_ros.control.camera import PinholeCamera
from ssd_ros.control.follow import Command
from ssd_ros.ros.messages import (
    camera_from_info,
    camera_info_msg,
    detections_to_msg,
    msg_to_detections,
    stamp_msg,
    stamp_ns,
    twist_msg,
    twist_to_command,
)
from ssd_ros.vision.detections import Detections


def _detection(cx=320.0, cy=240.0, w=40.0, h=120.0, score=0.9, class_id="person") -> Detection2D:
    det = Detection2D()
    det.bbox.center.position.x, det.bbox.center.position.y = cx, cy
    det.bbox.size_x, det.bbox.size_y = w, h
    hypothesis = ObjectHypothesisWithPose()
    hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = class_id, score
    det.results = [hypothesis]
    return det


def test_a_valid_detection_becomes_corner_boxes():
    got = msg_to_detections(Detection2DArray(detections=[_detection()]))
    assert got.boxes.tolist() == [[300.0, 180.0, 340.0, 300.0]] and got.names == ["person"]
    assert got.scores.tolist() == pytest.approx([0.9])


def test_detection_ids_are_the_track_ids_or_empty_when_untracked():
    boxes, scores, names = [[0, 0, 10, 20], [5, 5, 15, 25]], [0.9, 0.8], ["person", "dog"]
    untracked = Detections.from_named(boxes, scores, names)
    assert untracked.ids == ("", "") and Detections.empty().ids == ()
    assert [d.id for d in detections_to_msg(untracked, Header()).detections] == ["", ""]
    tracked = Detections.from_named(boxes, scores, names, track_ids=["7", ""])
    assert [d.id for d in detections_to_msg(tracked, Header()).detections] == ["7", ""]
    assert msg_to_detections(detections_to_msg(tracked, Header())).ids == ("7", "")


@pytest.mark.parametrize(
    "bad",
    [
        {"cx": math.nan},
        {"w": math.inf},
        {"h": -1.0},
        {"score": 5.0},  # a certainty above 1 must not win the target selection
        {"score": -0.1},
        {"cx": 1e300},  # finite, but inf once stored as float32
    ],
)
def test_malformed_detections_are_dropped(bad):
    msg = Detection2DArray(detections=[_detection(**bad), _detection(class_id="dog")])
    assert msg_to_detections(msg).names == ["dog"]


@pytest.mark.parametrize("ns", [0, 1, 1_700_000_000_123_456_789, -1, -1_500_000_000])
def test_stamp_msg_is_the_inverse_of_stamp_ns(ns):
    stamp = stamp_msg(ns)
    assert 0 <= stamp.nanosec < 1_000_000_000  # the only valid layout of builtin_interfaces/Time
    assert stamp_ns(Header(stamp=stamp)) == ns


def test_twist_msg_carries_linear_x_and_angular_z_with_their_signs():
    command = Command(0.25, -0.5)  # forward, turning right
    plain = twist_msg(command)
    assert isinstance(plain, Twist) and (plain.linear.x, plain.angular.z) == (0.25, -0.5)
    assert plain.linear.y == plain.linear.z == plain.angular.x == plain.angular.y == 0.0
    stamped = twist_msg(command, stamped=True, frame_id="base_link", now_ns=2_000_000_001)
    assert isinstance(stamped, TwistStamped) and stamped.twist == plain
    assert stamped.header.frame_id == "base_link" and stamp_ns(stamped.header) == 2_000_000_001
    assert twist_to_command(stamped) == twist_to_command(plain) == command


def test_camera_info_round_trip_binning_roi_and_uncalibrated():
    camera = PinholeCamera(1280, 720, fx_px=914.0, cx_px=655.5)
    msg = camera_info_msg(camera, Header(frame_id="camera"))
    assert (msg.k[0], msg.k[2], msg.k[4], msg.k[8]) == (914.0, 655.5, 914.0, 1.0) and msg.header.frame_id == "camera"
    assert camera_from_info(msg) == camera
    # 2x2 binning of a region 100 px from the left edge: a 540x360 image whose centre column moved.
    msg.binning_x = msg.binning_y = 2
    msg.roi.x_offset, msg.roi.width, msg.roi.height = 100, 1080, 720
    assert camera_from_info(msg) == PinholeCamera(540, 360, fx_px=457.0, cx_px=277.75)
    uncalibrated = CameraInfo(width=640, height=480)  # what an uncalibrated driver publishes: K all zero
    with pytest.raises(ValueError, match="without a calibration"):
        camera_from_info(uncalibrated)
    msg.binning_x = 2000  # more than the region's 1080 columns
    with pytest.raises(ValueError, match="binning 2000x2 leaves no pixel of its 1080x720 image"):
        camera_from_info(msg)


def calibration_msg(model: str, d: list[float]) -> CameraInfo:
    """A CameraInfo as camera_calibration writes it for a 640x480 Pi camera."""
    return CameraInfo(
        width=640,
        height=480,
        distortion_model=model,
        d=d,
        k=[330.0, 0.0, 322.5, 0.0, 328.0, 241.0, 0.0, 0.0, 1.0],
        r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        p=[300.0, 0.0, 320.0, 0.0, 0.0, 300.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    )


@pytest.mark.parametrize(
    "model,d",
    [
        ("plumb_bob", [-0.3, 0.09, 0.001, -0.0005, -0.012]),
        ("rational_polynomial", [0.2, 0.01, 0.0008, 0.0004, 0.0, 0.5, 0.05, 0.0]),
        ("equidistant", [0.05, -0.01, 0.002, -0.0005]),
    ],
)
def test_camera_info_distortion_is_taken_and_round_trips(model, d):
    camera = camera_from_info(calibration_msg(model, d))
    assert camera == PinholeCamera(640, 480, 330.0, 322.5, 328.0, 241.0, model, tuple(d))
    assert camera_from_info(camera_info_msg(camera, Header())) == camera
    # The corner pixel's bearing is not the pinhole one (the lens bends it), whatever binning and ROI publish.
    assert abs(camera.bearing_rad(20.0, 30.0) - math.atan2(322.5 - 20.0, 330.0)) > math.radians(3.0)
    binned = calibration_msg(model, d)
    binned.binning_x = binned.binning_y = 2
    binned.roi.x_offset, binned.roi.y_offset, binned.roi.width, binned.roi.height = 10, 20, 600, 440
    part = camera_from_info(binned)
    assert (part.width_px, part.height_px, part.distortion) == (300, 220, tuple(d))
    # Published pixel (u, v) is the calibrated image's (2u + 10, 2v + 20): the same ray, the same bearing.
    for u, v in [(5.0, 5.0), (150.0, 110.0), (290.0, 200.0)]:
        assert part.bearing_rad(u, v) == pytest.approx(camera.bearing_rad(2 * u + 10, 2 * v + 20), abs=1e-9)


@pytest.mark.parametrize(
    "model,d,message",
    [
        ("kannala_brandt", [0.1, 0.0, 0.0, 0.0], "unknown distortion model 'kannala_brandt'"),
        ("plumb_bob", [-0.3, 0.09, 0.001, -0.0005], "'plumb_bob' takes 5 finite coefficients, got 4"),
        ("equidistant", [0.05, -0.01, 0.002, -0.0005, 0.0], "'equidistant' takes 4 finite coefficients, got 5"),
    ],
)
def test_camera_info_with_an_unknown_model_or_wrong_coefficient_count_is_refused(model, d, message):
    with pytest.raises(ValueError, match=message):
        camera_from_info(calibration_msg(model, d))


def test_camera_info_without_distortion_is_the_pinhole_camera_as_before():
    """Drivers that publish no lens model (empty d, any name) or zeros: the plain pinhole camera, unchanged."""
    plain = PinholeCamera(640, 480, 330.0, 322.5, 328.0, 241.0)
    for model, d in [("", []), ("plumb_bob", [0.0] * 5), ("equidistant", [0.0] * 4)]:
        camera = camera_from_info(calibration_msg(model, d))
        assert camera == plain and camera.bearing_rad(20.0, 30.0) == math.atan2(322.5 - 20.0, 330.0)
