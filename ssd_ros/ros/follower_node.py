"""``follower`` node: Detection2DArray in, Twist / TwistStamped on ``cmd_vel`` from a fixed-rate timer.

The control law lives in :mod:`ssd_ros.control.follow`; this adapter declares the parameters, converts
messages, runs the controller on its own timer (so a silent detector still stops the robot within
``lost_timeout_s``), offers the ``enable`` service, reports ``/diagnostics`` and says why its inputs are
silent (:mod:`ssd_ros.ros.silence`). It says what it follows: ``follow_target`` (the followed detection, with
the header of the frame it was chosen in) and ``follow_state`` (latched: following, lost, re-acquiring,
searching, disabled or inactive), which the detector's annotated image draws. It is a lifecycle node
(:mod:`ssd_ros.ros.managed`): configure builds the controller, activate brings up topics, service and timer,
deactivate (and shutdown) first publishes one exact zero command.
"""

from __future__ import annotations

import math
import sys
from dataclasses import fields

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import Twist, TwistStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import String
from std_srvs.srv import SetBool
from vision_msgs.msg import Detection2D, Detection2DArray, LabelInfo

from ssd_ros.control.follow import ZERO, Command, FollowerSettings, FollowLoop, FollowParams
from ssd_ros.ros.managed import AUTOSTART, ManagedNode
from ssd_ros.ros.messages import (
    LATCHED_QOS,
    camera_from_info,
    detections_to_msg,
    diagnostics_msg,
    msg_to_detections,
    stamp_ns,
    twist_msg,
)
from ssd_ros.ros.params import ParameterTable, dataclass_table
from ssd_ros.ros.runner import run_node
from ssd_ros.ros.silence import InputWatcher
from ssd_ros.settings import settings_from_mapping
from ssd_ros.vision.detections import Detections

# The control law's parameters (with the rover's geometry) and the node's own, from their settings classes.
PARAMETERS: ParameterTable = {**dataclass_table(FollowParams), **dataclass_table(FollowerSettings), **AUTOSTART}
# Detection messages that may arrive before the camera's calibration does (discovery, start-up order)
# before the configured field of view is reported as the fallback in use.
CAMERA_INFO_GRACE_MESSAGES = 10
FOLLOW_FIELDS = frozenset(f.name for f in fields(FollowParams))


class FollowerNode(ManagedNode):
    """Runs :class:`FollowController` on a fixed-rate timer and publishes velocity commands (a lifecycle node)."""

    def __init__(self):
        """Declare the parameters and start the diagnostics (configure builds the controller)."""
        super().__init__("follower", PARAMETERS)
        self.loop: FollowLoop | None = None
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # In every state (latched), so a picture of an inactive follower says so.
        self.state_pub = self.create_publisher(String, "follow_state", LATCHED_QOS)
        self._state: str | None = None
        self._publish_state("inactive")
        # In every state, so an unconfigured follower says why (on the steady clock: sim time may not run).
        self.create_timer(
            self.get_parameter("diagnostics_period_s").value,
            self._publish_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )

    @property
    def controller(self):
        """The control law (``None`` while unconfigured)."""
        return None if self.loop is None else self.loop.controller

    def configure(self, values: dict[str, object]) -> None:
        """Build the controller from the parameters (``ValueError`` naming a bad one)."""
        self.loop = FollowLoop(settings_from_mapping(FollowParams, values))  # ignores the node's own parameters
        settings = settings_from_mapping(FollowerSettings, values)
        self._start_enabled = settings.start_enabled
        self.controller.set_enabled(self._start_enabled)
        self._stamped = settings.twist_stamped
        self.period_s = 1.0 / settings.rate_hz
        self.malformed_detections = 0
        self._stale_reported = 0
        self._frames_seen = 0
        self._class_problem: str | None = None  # why the target classes are never followed, if they are not
        self._outside_reported = 0
        self._camera_problem = ""  # why the camera model is not the detections' image, as last logged
        self._detection_messages = 0
        self._camera_info_topic = self.resolve_topic_name(settings.camera_info_topic)
        self._detections_watch = self._camera_watch = None

    def activate(self) -> None:
        """Publisher, subscriptions (watched), the enable service and the control timer; enabled per start_enabled.

        Deactivation disabled the controller for its final zero, so every activation starts from ``start_enabled``
        again, as the first one did.
        """
        self.controller.set_enabled(self._start_enabled)
        self.cmd_pub = self.own(self.create_publisher(TwistStamped if self._stamped else Twist, "cmd_vel", 10))
        self.target_pub = self.own(self.create_publisher(Detection2D, "follow_target", 10))
        self._detections_watch = self.own(
            InputWatcher(self, "detections", topic_fix=lambda topic: f"remap -r detections:={topic}")
        )
        # Best effort accepts both reliable and best-effort detector publishers.
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
        self._detections_watch.subscribe(Detection2DArray, "detections", self.while_active(self._on_detections), qos)
        # The detector's class map (latched, so it arrives whenever this node starts).
        self.own(self.create_subscription(LabelInfo, "label_info", self.while_active(self._on_label_info), LATCHED_QOS))
        # Best effort, newest only: cameras publish it with every frame, reliable or not.
        self._camera_watch = self.own(
            InputWatcher(self, "camera_info", topic_fix=lambda topic: f"set -p camera_info_topic:={topic}")
        )
        latest = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        self._camera_watch.subscribe(
            CameraInfo, self._camera_info_topic, self.while_active(self._on_camera_info), latest
        )
        self.own(self.create_service(SetBool, "enable", self._on_enable))
        self.own(self.create_timer(self.period_s, self.while_active(self._on_timer)))
        params = self.controller.params
        self.get_logger().info(
            f"following {list(params.target_classes)} at {1.0 / self.period_s:.0f} Hz on "
            f"{'TwistStamped' if self._stamped else 'Twist'} (enabled: {self.controller.enabled})"
        )

    def deactivate(self) -> None:
        """One exact zero command, delivered, then no topic, service or timer: the base's watchdog holds the stop."""
        self._publish_final_zero()
        self._publish_state("inactive")

    def cleanup(self) -> None:
        """Forget the controller (its target, tracker and counters)."""
        self.loop = None

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        changes = {p.name: p.value for p in parameters if p.name in FOLLOW_FIELDS}
        if not changes or self.loop is None:  # unconfigured: configure validates them
            return SetParametersResult(successful=True)
        try:
            self.controller.set_params(settings_from_mapping(self.controller.params, changes))
        except (ValueError, TypeError) as error:
            return SetParametersResult(successful=False, reason=str(error))
        self._check_classes()
        return SetParametersResult(successful=True)

    def _on_label_info(self, msg: LabelInfo) -> None:
        self.loop.model_classes = tuple(c.class_name for c in sorted(msg.class_map, key=lambda c: c.class_id))
        self._check_classes()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            camera = camera_from_info(msg)
        except ValueError as error:
            self.get_logger().warning(f"{self._camera_info_topic}: {error}; ignored", throttle_duration_sec=30.0)
            return
        if camera != self.controller.measured_camera:
            self.controller.measured_camera = camera
            self.get_logger().info(f"bearing from {self._camera_info_topic}, {self._camera_description()}")

    def _check_classes(self) -> None:
        """Say, once per change, when the target classes can never be followed (and when that is mended)."""
        problem = self.loop.class_problem()
        if problem != self._class_problem:
            if problem is not None:
                self.get_logger().warning(problem)
            else:
                self.get_logger().info(f"target classes {list(self.controller.params.target_classes)} are known")
            self._class_problem = problem

    def _on_detections(self, msg: Detection2DArray) -> None:
        detections = msg_to_detections(msg)
        dropped = len(msg.detections) - len(detections)
        if dropped and not detections:
            self._detections_watch.rejected(
                "every detection malformed (non-finite or negative box/score, or no results); fix the publisher"
            )
        if dropped:
            self.malformed_detections += dropped
            self.get_logger().warning(
                f"ignored {dropped} malformed detection(s) (non-finite or negative box/score, or no results) "
                f"on {self.resolve_topic_name('detections')}",
                throttle_duration_sec=5.0,
            )
        self._detection_messages += 1
        self._offered_header = msg.header  # the frame the next tick decides on
        if self._detection_messages == CAMERA_INFO_GRACE_MESSAGES and self.controller.measured_camera is None:
            self.get_logger().warning(
                f"no calibrated CameraInfo on {self._camera_info_topic}: bearing from {self._camera_description()}"
            )
        seen = len(self.loop.seen_classes)
        self.loop.offer(detections, stamp_ns(msg.header) / 1e9)  # the controller discards implausible stamps
        if len(self.loop.seen_classes) > seen:
            self._check_classes()

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        self.controller.set_enabled(request.data)
        if not request.data:
            self.publish(ZERO)
        response.success = True
        response.message = "following enabled" if request.data else "following disabled, robot stopped"
        self.get_logger().info(response.message)
        return response

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds / 1e9

    def _on_timer(self) -> None:
        command = self.loop.tick(self._now_s())
        counters = self.controller.counters
        self._publish_state(self.controller.status)  # before the target: a reader pairs a target with the state then
        if counters["frames"] > self._frames_seen:
            self._frames_seen = counters["frames"]
            self._detections_watch.accepted()
            self._publish_target(self._offered_header)
        stale = counters["stale_frames"]
        if stale > self._stale_reported:
            for _ in range(stale - self._stale_reported):
                self._detections_watch.rejected(
                    f"stamps older than max_detection_age_s {self.controller.params.max_detection_age_s} s by this "
                    "node's clock; fix: the detector's stamps, the clocks (chrony) or use_sim_time on both"
                )
            self._stale_reported = stale
            self.get_logger().warning(
                f"ignoring detections older than {self.controller.params.max_detection_age_s} s "
                f"({stale} so far); check the detector's stamps and clock",
                throttle_duration_sec=5.0,
            )
        outside = self.controller.counters["outside_image"]
        if outside > self._outside_reported:
            self._outside_reported = outside
            camera = self.controller.camera
            self.get_logger().warning(
                f"ignoring boxes far outside the {camera.width_px}x{camera.height_px} image ({outside} so far); "
                f"check {self._camera_info_topic} or image_width / image_height",
                throttle_duration_sec=5.0,
            )
        problem = self._camera_problem_now()
        if problem != self._camera_problem:  # once per camera model
            if problem:
                self.get_logger().warning(problem)
            self._camera_problem = problem
        self.publish(command)

    def _publish_target(self, header) -> None:
        """What this tick chose in the frame of ``header``: the target as last seen (id "" and no box: none)."""
        target = self.controller.target
        if target is None:
            self.target_pub.publish(Detection2D(header=header))
            return
        chosen = Detections.from_named(target.box[None], [target.score], [target.class_name], [target.track_id])
        self.target_pub.publish(detections_to_msg(chosen, header).detections[0])

    def _publish_state(self, state: str) -> None:
        """``follow_state`` when it changes (latched: a late subscriber gets the current one)."""
        if state != self._state and self.context.ok():
            self._state = state
            self.state_pub.publish(String(data=state))

    def publish(self, command: Command) -> None:
        """Publish ``command`` as Twist or TwistStamped (stamped with the node clock)."""
        now_ns = self.get_clock().now().nanoseconds
        self.cmd_pub.publish(twist_msg(command, self._stamped, self.get_parameter("cmd_frame_id").value, now_ns))

    def _publish_diagnostics(self) -> None:
        controller = self.controller
        if controller is None:
            level, message = self.lifecycle_status()
            values = {"lifecycle_state": self.state_label}
            self.diag_pub.publish(diagnostics_msg(self, "follower", level, message, "picar_b", values))
            return
        command = controller.last_command
        track = controller.target
        last = self.loop.last_stamp_s
        age = "none" if last is None else f"{self._now_s() - last:.3f}"
        values = {
            "state": controller.state,
            "enabled": str(controller.enabled),
            "target_class": track.class_name if track else "",
            "target_id": track.track_id if track else "",
            "target_score": f"{track.score:.2f}" if track else "",
            "last_detection_age_s": age,
            "linear_mps": f"{command.linear_mps:.3f}",
            "angular_radps": f"{command.angular_radps:.3f}",
            "steering_deg": f"{math.degrees(controller.steering_rad):.1f}",
            "malformed_detections": str(self.malformed_detections),
            **{name: str(count) for name, count in controller.counters.items()},
            "target_classes": ", ".join(controller.params.target_classes),
            "model_classes": "unknown" if self.loop.model_classes is None else ", ".join(self.loop.model_classes),
            "camera": self._camera_description(),
            "lifecycle_state": self.state_label,
            "detections_problem": (self._detections_watch and self._detections_watch.problem) or "",
            "camera_info_problem": (self._camera_watch and self._camera_watch.problem) or "",
            "camera_problem": self._camera_problem_now(),
        }
        message, level = controller.state, DiagnosticStatus.OK
        if controller.state == "lost" or controller.counters["non_finite_commands"] > 0:
            level = DiagnosticStatus.WARN
        if values["detections_problem"]:  # the usual reason for "lost" or "searching": say it
            message, level = f"{controller.state}: {values['detections_problem']}", DiagnosticStatus.WARN
        elif values["camera_problem"]:  # it steers on a geometry that is not the image's
            message, level = f"{controller.state}: {values['camera_problem']}", DiagnosticStatus.WARN
        if (status := self.lifecycle_status()) is not None:
            level, message = status
        if self._class_problem is not None:  # it will never move: that outranks any state
            message, level = f"{controller.state}: {self._class_problem}", DiagnosticStatus.ERROR
        self.diag_pub.publish(diagnostics_msg(self, "follower", level, message, "picar_b", values))

    def _camera_description(self) -> str:
        """Which camera model the bearing comes from, for the log and diagnostics."""
        camera, p = self.controller.measured_camera, self.controller.params
        if camera is None:
            return f"the configured camera_hfov_deg {p.camera_hfov_deg:g} over {p.image_width}x{p.image_height} px"
        lens = (
            f"{camera.distortion_model} distortion {list(camera.distortion)}" if camera.distortion else "no distortion"
        )
        return (
            f"CameraInfo: {camera.width_px}x{camera.height_px} px, fx {camera.fx_px:.1f} px, cx {camera.cx_px:.1f} px, "
            f"{lens}"
        )

    def _camera_problem_now(self) -> str:
        """Why the camera model cannot describe the detections' image ("" as far as is known).

        A box centre outside its image proves the detections come from a larger image (a camera streaming at another
        size than it was calibrated at, or image_width / image_height not the detector's) or a broken publisher. An
        image smaller than the model's leaves no such trace in boxes: that mismatch cannot be seen here.
        """
        centre = self.controller.outside_centre_px
        if centre is None:
            return ""
        camera = self.controller.camera
        if self.controller.measured_camera is None:
            fix = "set image_width / image_height to the detector's image, or publish its CameraInfo on "
            fix += self._camera_info_topic
        else:
            fix = f"calibrate the camera at the size it streams, or stream at {camera.width_px}x{camera.height_px}"
        return (
            f"a box centre at ({centre[0]:.0f}, {centre[1]:.0f}) px lies outside the image of "
            f"{self._camera_description()}: the detections come from a larger image (or a broken publisher), so "
            f"bearing and distance are wrong; {fix}"
        )

    def _publish_final_zero(self) -> None:
        """Disable, publish one exact zero command and let reliable readers have it (deactivate, shutdown)."""
        self.controller.set_enabled(False)
        if not self.context.ok():
            return
        self.publish(ZERO)
        # Deleting the writer right after publishing can drop the sample: let reliable readers have it first
        # (best-effort readers, like the base driver, fall back on their own command watchdog).
        self.cmd_pub.wait_for_all_acked(Duration(seconds=1.0))


def main(args=None) -> int:
    """Spin the follower; on Ctrl-C / SIGTERM the shutdown transition publishes a final zero command.

    Exit code 1 on invalid parameters or a failed configure (with autostart).
    """
    return run_node("follower", FollowerNode, args=args, parameters=PARAMETERS)


if __name__ == "__main__":
    sys.exit(main())
