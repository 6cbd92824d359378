"""Nodes that explain silence (issue 20): one line naming the fix for each cause, over real DDS.

The installed detector, follower and base driver run as processes; the test's node plays the camera, the
detector or the teleop with the wrong topic, type, QoS or content, and reads the nodes' logs and diagnostics.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, RosProbe, make_checkpoint, start_executable, stop_process
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Twist, TwistStamped
from rclpy.qos import QoSPolicyKind, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

from ssd_ros.ros.images import rgb_to_image_msg
from ssd_ros.ros.messages import detections_to_msg
from ssd_ros.ros.silence import (
    closest_name,
    incompatible_qos_advice,
    missing_publisher_advice,
    undeclared_parameter_warnings,
)
from ssd_ros.vision.detections import Detections

# Start-up of a node process (torch's import for the detector) on a loaded two-core machine, then discovery.
START_TIMEOUT_S = 120.0
# The watcher's own delays (NO_PUBLISHER_GRACE_S, REJECT_WINDOW_S) are a few seconds; discovery and a loaded
# machine come on top of them.
EXPLAIN_TIMEOUT_S = 30.0
BEST_EFFORT = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
RELIABLE = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)


# --- the texts, without ROS ----------------------------------------------------------------------------------


def test_closest_name_and_the_undeclared_parameter_line():
    declared = ["score_threshold", "nms_iou", "max_detections", "image_topic"]
    assert closest_name("scor_threshold", declared) == "score_threshold"
    assert closest_name("zzz", declared) is None
    lines = undeclared_parameter_warnings(
        ["scor_threshold", "nms_iou", "qos_overrides./image_raw.subscription.depth", "zzz"], declared, "detector"
    )
    assert lines == [
        "parameter 'scor_threshold' is not a parameter of detector and is ignored; did you mean 'score_threshold'?",
        "parameter 'zzz' is not a parameter of detector and is ignored; `detector --help` lists the parameters",
    ]


def test_missing_publisher_advice_lists_the_topics_that_would_do_with_the_fix():
    published = [
        ("/camera/image_raw/compressed", "sensor_msgs/msg/CompressedImage"),
        ("/camera/image_rect", "sensor_msgs/msg/Image"),
        ("/chatter", "std_msgs/msg/String"),
    ]
    advice = missing_publisher_advice(
        "/image_raw",
        "sensor_msgs/msg/Image",
        published,
        lambda topic: f"set -p image_topic:={topic}",
        {"sensor_msgs/msg/CompressedImage": lambda topic: f"set -p compressed:=true for {topic}"},
    )
    assert advice == (
        "no Image publisher on /image_raw; topics that would do: /camera/image_rect (Image): set -p "
        "image_topic:=/camera/image_rect; /camera/image_raw/compressed (CompressedImage): set -p compressed:=true "
        "for /camera/image_raw/compressed"
    )
    nothing = missing_publisher_advice("/image_raw", "sensor_msgs/msg/Image", published[2:], str, {})
    assert nothing.endswith("no Image topic exists: is the publisher running, with the same ROS_DOMAIN_ID?")


def test_incompatible_qos_advice_names_both_sides_and_the_parameter():
    advice = incompatible_qos_advice(
        "/image_raw",
        QoSPolicyKind.RELIABILITY,
        RELIABLE,
        [("/camera", BEST_EFFORT)],
        {QoSPolicyKind.RELIABILITY: "set -p qos_reliability:=best_effort"},
    )
    assert "/camera offers reliability BEST_EFFORT" in advice
    assert "this subscription requests reliability RELIABLE" in advice
    assert advice.endswith("fix: set -p qos_reliability:=best_effort")


# --- over DDS ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe():
    """The test's node, spun in the background (the publishers and the graph queries need no spinning here)."""
    with RosProbe("silence_test_probe", background=True) as probe:
        yield probe


def wait_for_line(probe, log: Path, *parts: str, timeout_s: float = EXPLAIN_TIMEOUT_S) -> str:
    """The first log line that contains every one of ``parts``."""

    def line():
        return next((ln for ln in log.read_text().splitlines() if all(p in ln for p in parts)), None)

    return probe.spin_until(line, timeout_s, f"a log line with {parts} in {log.name}", detail=lambda: log.read_text())


class Diagnostics:
    """Every /diagnostics status of one node, by name."""

    def __init__(self, probe, name: str):
        self.statuses = []
        self._name = name
        probe.node.create_subscription(DiagnosticArray, "/diagnostics", self._on, 50)

    def _on(self, msg):
        self.statuses += [s for s in msg.status if s.name.startswith(self._name)]

    def with_text(self, *parts: str):
        """A status whose message or values contain every one of ``parts``, else None."""
        for status in reversed(self.statuses):
            text = status.message + " ".join(kv.value for kv in status.values)
            if all(p in text for p in parts):
                return status
        return None


class Stream:
    """Publishes ``make()`` at ``rate_hz`` from a thread until stopped."""

    def __init__(self, publisher, make, rate_hz: float = 10.0):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(publisher, make, 1.0 / rate_hz), daemon=True)
        self._thread.start()

    def _run(self, publisher, make, period):
        while not self._stop.wait(period):
            publisher.publish(make())

    def stop(self):
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def detector(probe, tmp_path_factory):
    """One detector (reliable input, a typo among its parameters) shared by the detector's tests in file order."""
    folder = tmp_path_factory.mktemp("detector")
    checkpoint = make_checkpoint(folder / "ssdlite.pt")
    log = folder / "detector.log"
    diagnostics = Diagnostics(probe, "/quiet/detector")
    # A camera that publishes compressed frames only, under another name.
    compressed = probe.node.create_publisher(CompressedImage, "/camera/image_raw/compressed", BEST_EFFORT)
    process = start_executable(
        "detector",
        *("-r", "__ns:=/quiet", "-p", f"model_path:={checkpoint}", "-p", "device:=cpu"),
        *("-p", "qos_reliability:=reliable", "-p", "scor_threshold:=0.5"),
        log_path=log,
    )
    probe.spin_until(lambda: "lifecycle: activate -> active" in log.read_text(), START_TIMEOUT_S, "the detector")
    yield log, diagnostics
    probe.node.destroy_publisher(compressed)
    assert stop_process(process) == 0, log.read_text()


def test_detector_names_a_mistyped_parameter_and_the_closest_declared_one(probe, detector):
    log, _ = detector
    line = wait_for_line(probe, log, "'scor_threshold'")
    assert line.startswith("[WARN]") and "did you mean 'score_threshold'?" in line


def test_detector_without_a_publisher_names_the_compressed_topic_and_the_parameters(probe, detector):
    log, diagnostics = detector
    # Discovery of the camera may come after the grace: the advice is said again once it names the camera.
    wait_for_line(
        probe,
        log,
        "no Image publisher on /quiet/image_raw",
        "/camera/image_raw/compressed (CompressedImage): set -p compressed:=true -p image_topic:=/camera/image_raw",
    )
    advice = [line for line in log.read_text().splitlines() if "topics that would do" in line]
    assert not any("image_annotated" in line for line in advice), "the node offered its own output as its input"
    probe.spin_until(
        lambda: diagnostics.with_text("no input images", "compressed:=true"), EXPLAIN_TIMEOUT_S, "the diagnostics"
    )


def test_detector_with_an_incompatible_publisher_names_both_policies_and_the_parameter(probe, detector):
    log, diagnostics = detector
    camera = probe.node.create_publisher(Image, "/quiet/image_raw", BEST_EFFORT)
    try:
        line = wait_for_line(probe, log, "incompatible QoS (RELIABILITY)")
        assert "offers reliability BEST_EFFORT" in line and "requests reliability RELIABLE" in line
        assert "fix: set -p qos_reliability:=best_effort" in line
        probe.spin_until(
            lambda: diagnostics.with_text("qos_reliability:=best_effort"), EXPLAIN_TIMEOUT_S, "diagnostics"
        )
    finally:
        probe.node.destroy_publisher(camera)


def test_detector_receiving_only_bad_frames_says_how_many_and_why_once(probe, detector):
    log, diagnostics = detector
    camera = probe.node.create_publisher(Image, "/quiet/image_raw", RELIABLE)

    def bad_frame():
        msg = rgb_to_image_msg(np.zeros((48, 64, 3), np.uint8), Header(frame_id="camera"))
        msg.encoding = "8UC7"  # no camera's encoding this node reads
        return msg

    stream = Stream(camera, bad_frame)
    try:
        line = wait_for_line(probe, log, "all rejected")
        assert "on /quiet/image_raw" in line and "unknown encoding '8UC7'" in line
        assert "fix the camera driver's encoding (raw: rgb8" in line
        probe.spin_until(lambda: diagnostics.with_text("all rejected"), EXPLAIN_TIMEOUT_S, "diagnostics")
        # Once, then throttled: a few more windows of bad frames add no second line.
        windows = len([s for s in diagnostics.statuses if "all rejected" in " ".join(kv.value for kv in s.values)])
        probe.spin_until(
            lambda: (
                len([s for s in diagnostics.statuses if "all rejected" in " ".join(kv.value for kv in s.values)])
                >= windows + 3
            ),
            EXPLAIN_TIMEOUT_S,
            "three more reports of the rejection",
        )
        assert sum("all rejected" in ln for ln in log.read_text().splitlines()) == 1
    finally:
        stream.stop()
        probe.node.destroy_publisher(camera)


def detections_msg(probe, age_s: float) -> Detection2DArray:
    header = Header(frame_id="camera")
    header.stamp = probe.node.get_clock().now().to_msg()
    header.stamp.sec -= int(age_s)
    return detections_to_msg(
        Detections.from_named(np.array([[300.0, 180.0, 340.0, 300.0]]), np.array([0.9]), ["person"]), header
    )


@pytest.fixture
def follower(probe, tmp_path):
    log = tmp_path / "follower.log"
    process = start_executable("follower", "-r", "__ns:=/lonely", log_path=log)
    probe.spin_until(lambda: "lifecycle: activate -> active" in log.read_text(), START_TIMEOUT_S, "the follower")
    yield log
    assert stop_process(process) == 0, log.read_text()


def test_follower_without_publishers_names_the_remap_and_the_camera_info_parameter(probe, follower):
    diagnostics = Diagnostics(probe, "/lonely/follower")
    wait_for_line(probe, follower, "no Detection2DArray publisher on /lonely/detections")
    # The detector and the camera start late, under other names: the advice is said again, naming them.
    detections = probe.node.create_publisher(Detection2DArray, "/detector/detections", BEST_EFFORT)
    camera_info = probe.node.create_publisher(CameraInfo, "/camera/camera_info", BEST_EFFORT)
    try:
        wait_for_line(
            probe,
            follower,
            "no Detection2DArray publisher on /lonely/detections",
            "/detector/detections (Detection2DArray): remap -r detections:=/detector/detections",
        )
        wait_for_line(
            probe,
            follower,
            "no CameraInfo publisher on /lonely/camera/camera_info",
            "/camera/camera_info (CameraInfo): set -p camera_info_topic:=/camera/camera_info",
        )
        probe.spin_until(
            lambda: diagnostics.with_text("remap -r detections:=/detector/detections"), EXPLAIN_TIMEOUT_S, "diagnostics"
        )
    finally:
        probe.node.destroy_publisher(detections)
        probe.node.destroy_publisher(camera_info)


def test_follower_receiving_only_stale_detections_names_the_clock(probe, follower):
    publisher = probe.node.create_publisher(Detection2DArray, "/lonely/detections", RELIABLE)
    stream = Stream(publisher, lambda: detections_msg(probe, age_s=5.0))
    try:
        line = wait_for_line(probe, follower, "all rejected")
        assert "on /lonely/detections" in line and "older than max_detection_age_s 0.5 s" in line
        assert "chrony" in line and "use_sim_time" in line
    finally:
        stream.stop()
        probe.node.destroy_publisher(publisher)


def test_base_fed_twist_stamped_names_the_twist_stamped_parameter(probe, tmp_path):
    log = tmp_path / "picar_base.log"
    teleop = probe.node.create_publisher(TwistStamped, "/rover/cmd_vel", RELIABLE)
    config = REPO_ROOT / "config" / "picar_base.yaml"
    args = ("--params-file", str(config), "-p", "hardware:=sim", "-r", "__ns:=/rover", "-p", "cmd_timout_s:=0.5")
    process = start_executable("picar_base", *args, log_path=log)
    try:
        wait_for_line(
            probe,
            log,
            "no Twist publisher on /rover/cmd_vel",
            "/rover/cmd_vel (TwistStamped): set -p twist_stamped:=true",
            timeout_s=START_TIMEOUT_S,
        )
        assert "did you mean 'cmd_timeout_s'?" in log.read_text()
    finally:
        probe.node.destroy_publisher(teleop)
        assert stop_process(process) == 0, log.read_text()


def test_base_fed_non_finite_commands_says_they_are_all_rejected(probe, tmp_path):
    log = tmp_path / "picar_base.log"
    teleop = probe.node.create_publisher(Twist, "/nan/cmd_vel", RELIABLE)
    config = REPO_ROOT / "config" / "picar_base.yaml"
    process = start_executable("picar_base", "--params-file", str(config), "-p", "hardware:=sim", "-r", "__ns:=/nan",
                               log_path=log)  # fmt: skip
    nan = Twist()
    nan.linear.x = float("nan")
    stream = Stream(teleop, lambda: nan)
    try:
        line = wait_for_line(probe, log, "all rejected", timeout_s=START_TIMEOUT_S)
        assert "on /nan/cmd_vel" in line and "non-finite linear.x or angular.z" in line
    finally:
        stream.stop()
        probe.node.destroy_publisher(teleop)
        assert stop_process(process) == 0, log.read_text()
