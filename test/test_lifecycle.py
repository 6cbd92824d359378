"""The detector and the follower are lifecycle nodes: every transition over DDS with lifecycle_msgs' services.

The installed executables run with ``autostart:=false`` (as under a lifecycle manager) and the test's node is
the manager: it asks ``get_state``, ``get_available_transitions`` and ``change_state``, and checks what each
state offers on the graph (an inactive node has no subscription, so DDS delivers it nothing).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import rclpy
from conftest import RosProbe, make_checkpoint, start_executable, stop_process
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import Twist
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import GetAvailableTransitions, GetState
from rcl_interfaces.srv import SetParameters
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

from ssd_ros.ros.images import rgb_to_image_msg
from ssd_ros.ros.messages import detections_to_msg
from ssd_ros.vision.detections import Detections

# Start-up of a node process (torch's import for the detector) on a loaded two-core machine.
START_TIMEOUT_S = 120.0
# A transition's reply: configure loads a model (seconds); a reply is never sent twice (not idempotent).
TRANSITION_TIMEOUT_S = 120.0
WARN = DiagnosticStatus.WARN
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
# Diagnostics reports a finalized node must keep publishing, without an error, to show its timer survives.
FINALIZED_REPORTS = 3


@pytest.fixture
def probe():
    """The test's node, spun by the test itself."""
    with RosProbe("lifecycle_test_probe") as probe:
        yield probe


def state(probe, node: str) -> str:
    return probe.call(GetState, f"{node}/get_state", GetState.Request(), timeout_s=START_TIMEOUT_S).current_state.label


def transitions(probe, node: str) -> set[str]:
    reply = probe.call(GetAvailableTransitions, f"{node}/get_available_transitions", GetAvailableTransitions.Request())
    return {t.transition.label for t in reply.available_transitions}


def change(probe, node: str, transition: int) -> bool:
    """Ask for ``transition`` once; whether it succeeded (``RosProbe.change_state``)."""
    return probe.change_state(node, transition, TRANSITION_TIMEOUT_S)


def latest_status(statuses, node: str):
    return next((s for s in reversed(statuses) if s.name.startswith(node)), None)


def assert_finalized_reports_without_errors(probe, statuses, node: str, log) -> None:
    """After a shutdown transition the process lives on: its diagnostics say finalized, and nothing raises."""
    seen = len(statuses)

    def finalized_reports():
        return [s for s in statuses[seen:] if s.name.startswith(node) and "finalized" in s.message]

    probe.spin_until(lambda: len(finalized_reports()) >= FINALIZED_REPORTS, 30.0, "diagnostics saying finalized")
    assert all(s.level == WARN for s in finalized_reports())
    text = log.read_text()
    errors = [line for line in text.splitlines() if line.startswith(("[ERROR]", "[FATAL]"))]
    assert not errors and "Traceback" not in text, text


def test_follower_goes_through_every_transition_and_stops_with_one_zero_on_deactivate(probe, tmp_path):
    log = tmp_path / "follower.log"
    process = start_executable("follower", "-p", "autostart:=false", "-r", "__ns:=/managed", log_path=log)
    node = "/managed/follower"
    commands, statuses = [], []
    probe.node.create_subscription(Twist, "/managed/cmd_vel", commands.append, RELIABLE)
    probe.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: statuses.extend(m.status), 50)
    detections = probe.node.create_publisher(Detection2DArray, "/managed/detections", RELIABLE)

    def person():  # centred, a quarter of the image high: the follower drives towards it
        header = Header(frame_id="camera", stamp=probe.node.get_clock().now().to_msg())
        boxes, scores = np.array([[300.0, 180.0, 340.0, 300.0]]), np.array([0.9])
        return detections_to_msg(Detections.from_named(boxes, scores, ["person"]), header)

    def drive_then_deactivate(what: str) -> None:
        """Detections stream (as from a camera) until the deactivate reply: the follower never runs out of them."""
        start = len(commands)
        feed = probe.node.create_timer(0.05, lambda: detections.publish(person()))
        try:
            probe.spin_until(lambda: len(commands) > start and commands[-1].linear.x > 0.2, 30.0, what)
            assert change(probe, node, Transition.TRANSITION_DEACTIVATE)
        finally:
            probe.node.destroy_timer(feed)
        # The zero was delivered to this reliable reader before the reply; then the publisher is gone.
        probe.spin_until(lambda: commands[-1].linear.x == 0.0, 10.0, "the zero command")
        probe.spin_until(lambda: probe.node.count_publishers("/managed/cmd_vel") == 0, 30.0, "cmd_vel to go")
        last, before = commands[-1], commands[-2]
        assert last.linear.x == 0.0 and last.angular.z == 0.0 and before.linear.x > 0.2  # exactly one zero
        assert state(probe, node) == "inactive"

    try:
        assert state(probe, node) == "unconfigured"
        assert transitions(probe, node) == {"configure", "shutdown"}
        assert change(probe, node, Transition.TRANSITION_CONFIGURE)
        assert state(probe, node) == "inactive"
        assert transitions(probe, node) == {"activate", "cleanup", "shutdown"}
        assert probe.node.count_publishers("/managed/cmd_vel") == 0  # topics come with activate

        assert change(probe, node, Transition.TRANSITION_ACTIVATE)
        assert state(probe, node) == "active"
        drive_then_deactivate("the follower to drive")
        # Deactivation disabled the controller for its zero; activated again it follows as start_enabled says.
        assert change(probe, node, Transition.TRANSITION_ACTIVATE)
        drive_then_deactivate("the follower to drive again after deactivate and activate")

        assert change(probe, node, Transition.TRANSITION_CLEANUP)
        assert state(probe, node) == "unconfigured"
        assert change(probe, node, Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        assert state(probe, node) == "finalized"
        assert_finalized_reports_without_errors(probe, statuses, node, log)
        text = log.read_text()
        for step in (
            "configure -> inactive",
            "activate -> active",
            "deactivate -> inactive",
            "cleanup -> unconfigured",
            "shutdown -> finalized",
        ):
            assert f"lifecycle: {step}" in text, text
    finally:
        assert stop_process(process) == 0, log.read_text()


def test_a_node_started_alone_configures_and_activates_itself(probe, tmp_path):
    log = tmp_path / "follower.log"
    process = start_executable("follower", "-r", "__ns:=/alone", log_path=log)
    try:
        assert state(probe, "/alone/follower") == "active"
    finally:
        assert stop_process(process) == 0, log.read_text()


def test_detector_that_cannot_configure_stays_unconfigured_and_says_why(probe, tmp_path):
    log = tmp_path / "detector.log"
    statuses = []
    probe.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: statuses.extend(m.status), 50)
    missing = tmp_path / "missing.pt"
    process = start_executable(
        "detector", "-p", "autostart:=false", "-p", f"model_path:={missing}", "-r", "__ns:=/broken", log_path=log
    )
    node = "/broken/detector"
    try:
        assert state(probe, node) == "unconfigured"
        assert not change(probe, node, Transition.TRANSITION_CONFIGURE)
        assert state(probe, node) == "unconfigured" and process.poll() is None
        reason = f"configure failed: checkpoint {missing}: no such file"
        assert any(line.startswith("[ERROR]") and reason in line for line in log.read_text().splitlines())
        probe.spin_until(
            lambda: (s := latest_status(statuses, node)) and s.level == DiagnosticStatus.ERROR and reason in s.message,
            30.0,
            "an ERROR status naming the reason",
        )
    finally:
        assert stop_process(process) == 0, log.read_text()


def test_detector_subscribes_only_while_active_and_releases_its_model_on_cleanup(probe, tmp_path):
    log = tmp_path / "detector.log"
    checkpoint = make_checkpoint(tmp_path / "ssdlite.pt")
    statuses, answers = [], []
    probe.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: statuses.extend(m.status), 50)
    probe.node.create_subscription(Detection2DArray, "/cycle/detections", answers.append, RELIABLE)
    camera = probe.node.create_publisher(Image, "/cycle/image_raw", RELIABLE)
    args = ("-p", "autostart:=false", "-p", f"model_path:={checkpoint}", "-p", "device:=cpu", "-r", "__ns:=/cycle")
    process = start_executable("detector", *args, "-p", "qos_reliability:=reliable", log_path=log)
    node = "/cycle/detector"
    try:
        assert state(probe, node) == "unconfigured"
        assert change(probe, node, Transition.TRANSITION_CONFIGURE)
        assert "lifecycle: configure -> inactive" in log.read_text()
        assert probe.node.count_subscribers("/cycle/image_raw") == 0  # loaded, but not reading

        assert change(probe, node, Transition.TRANSITION_ACTIVATE)
        probe.spin_until(lambda: probe.node.count_subscribers("/cycle/image_raw"), 30.0, "the image subscription")
        header = Header(frame_id="camera", stamp=probe.node.get_clock().now().to_msg())
        probe.spin_until(lambda: probe.node.count_publishers("/cycle/detections"), 30.0, "the detections publisher")
        camera.publish(rgb_to_image_msg(np.full((240, 320, 3), 128, np.uint8), header))
        probe.spin_until(lambda: any(a.header == header for a in answers), 60.0, "the detections of the frame")

        assert change(probe, node, Transition.TRANSITION_DEACTIVATE)
        # No reader left: DDS sends an inactive detector nothing, so a 30 Hz camera costs it nothing
        # (benchmarks/bench_lifecycle.py measures the CPU).
        probe.spin_until(lambda: probe.node.count_subscribers("/cycle/image_raw") == 0, 30.0, "no image reader")
        probe.spin_until(lambda: probe.node.count_publishers("/cycle/detections") == 0, 30.0, "no detections writer")

        assert change(probe, node, Transition.TRANSITION_CLEANUP)
        assert state(probe, node) == "unconfigured"
        probe.spin_until(
            lambda: (
                (s := latest_status(statuses, node))
                and s.level == DiagnosticStatus.WARN
                and "unconfigured" in s.message
            ),
            30.0,
            "diagnostics saying it is unconfigured",
        )
        # Configured again from the same parameters: the model loads a second time.
        assert change(probe, node, Transition.TRANSITION_CONFIGURE)
        assert log.read_text().count("lifecycle: configure -> inactive") == 2
        assert state(probe, node) == "inactive"
        # Shut down with the process going on: no model, no worker, and diagnostics still say where it stands.
        assert change(probe, node, Transition.TRANSITION_INACTIVE_SHUTDOWN)
        assert_finalized_reports_without_errors(probe, statuses, node, log)
    finally:
        assert stop_process(process) == 0, log.read_text()


def test_detector_whose_activate_fails_leaves_no_inference_worker_behind(tmp_path):
    """An image_topic rclpy refuses fails activate after the publishers exist; each retry fails the same way.

    In this process (the worker is a thread): after three failed activations no worker is left waiting.
    """
    from ssd_ros.ros.detector_node import DetectorNode

    checkpoint = make_checkpoint(tmp_path / "ssdlite.pt")
    params = ("autostart:=false", f"model_path:={checkpoint}", "device:=cpu", "image_topic:=bad topic!")
    rclpy.init(args=["--ros-args", "-r", "__ns:=/refused", *(arg for p in params for arg in ("-p", p))])
    try:
        node = DetectorNode()
        try:
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            for _ in range(3):
                assert node.trigger_activate() == TransitionCallbackReturn.FAILURE
                assert node.state_label == "inactive" and node.problem.startswith("activate failed:"), node.problem
            assert [t for t in threading.enumerate() if t.name == "detector-worker"] == []
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown()


def test_follower_deactivated_under_a_stream_of_detections_runs_no_callback_of_what_it_destroyed(probe, tmp_path):
    """rclpy's EventsExecutor may run callbacks it queued for a timer or subscription that deactivate destroyed:
    the control tick then published on the destroyed cmd_vel, logged as FATAL on most of these deactivations."""
    log = tmp_path / "follower.log"
    process = start_executable("follower", "-p", "autostart:=false", "-r", "__ns:=/churn", log_path=log)
    node = "/churn/follower"
    detections = probe.node.create_publisher(Detection2DArray, "/churn/detections", RELIABLE)
    stop = threading.Event()

    def feed():  # as fast as this process publishes: a flood that keeps events queued while the node deactivates
        boxes, scores = np.array([[300.0, 180.0, 340.0, 300.0]]), np.array([0.9])
        while not stop.is_set():
            header = Header(frame_id="camera", stamp=probe.node.get_clock().now().to_msg())
            detections.publish(detections_to_msg(Detections.from_named(boxes, scores, ["person"]), header))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        for _ in range(6):
            for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
                assert change(probe, node, transition)
            probe.spin_for(0.5)  # a dwell, not a bound: the flood is what queues the executor's events
            for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP):
                assert change(probe, node, transition)
    finally:
        stop.set()
        feeder.join()
        assert stop_process(process) == 0, log.read_text()
    text = log.read_text()
    assert text.count("lifecycle: deactivate -> inactive") == 6
    assert "FATAL" not in text and "Exception in" not in text, text


def test_follower_with_a_bad_value_stays_unconfigured_until_it_is_mended_and_configured_again(probe, tmp_path):
    """autostart:=false: a configure failure leaves the node running, and a runtime parameter can mend it."""
    log = tmp_path / "follower.log"
    args = ("-p", "autostart:=false", "-p", "search_steering_deg:=40.0", "-r", "__ns:=/mend")
    process = start_executable("follower", *args, log_path=log)
    node = "/mend/follower"
    try:
        assert not change(probe, node, Transition.TRANSITION_CONFIGURE)
        assert state(probe, node) == "unconfigured" and process.poll() is None
        assert "configure failed: search_steering_deg must be <= max_steering_deg" in log.read_text()
        request = SetParameters.Request(parameters=[Parameter("search_steering_deg", value=10.0).to_parameter_msg()])
        assert probe.call(SetParameters, f"{node}/set_parameters", request).results[0].successful
        assert change(probe, node, Transition.TRANSITION_CONFIGURE)
        assert state(probe, node) == "inactive"
    finally:
        assert stop_process(process) == 0, log.read_text()
