"""``follower_sim`` node: the simulator of :mod:`ssd_ros.simulation.simulator` behind the detector interface.

Consumes ``cmd_vel`` (Twist or TwistStamped) like the base driver (a non-finite command is ignored by the base's
rule and counted; the last good one drives on until ``cmd_timeout_s``); publishes ``detections``
(vision_msgs/Detection2DArray exactly as the detector node does: class names in ``class_id``, the
tracker's id in ``id`` with ``tracking``, header = the simulated image's header with ``camera_frame_id``
and its capture stamp), the simulated
camera's calibration on ``camera/camera_info`` (with each frame's header, like a camera driver) and the
ground truth on ``sim/rover_pose`` (PoseStamped, rear axle) and ``sim/target_poses`` (PoseArray,
scenario order, removed targets included).

Time: by default the simulation follows the node clock (stamps are node-clock times). With
``publish_clock`` it owns time instead: it publishes ``/clock`` advancing ``real_time_factor`` x
faster than the wall clock, so every node started with ``use_sim_time:=true`` runs faster than
real time consistently (the timers of those nodes run on that clock too).
"""

from __future__ import annotations

import math
import sys

from geometry_msgs.msg import Pose, PoseArray, PoseStamped, Twist, TwistStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header
from vision_msgs.msg import Detection2DArray

from ssd_ros.control.follow import FollowParams
from ssd_ros.control.geometry import PERSON_HEIGHT_M
from ssd_ros.ros.messages import camera_info_msg, detections_to_msg, stamp_msg, twist_to_command
from ssd_ros.ros.params import ParameterTable, dataclass_table, declare_all, param
from ssd_ros.ros.runner import run_node
from ssd_ros.rover.picar_base import finite_command
from ssd_ros.settings import settings_from_mapping
from ssd_ros.simulation.simulator import SCENARIOS, SimParams, Simulator, desired_distance_m, make_scenario

# The simulation is built at start-up: every parameter is read-only except the three runtime switches below.
PARAMETERS: ParameterTable = {
    **dataclass_table(SimParams, read_only=True),
    "scenario": param("static", f"scripted scenario, one of {', '.join(SCENARIOS)}", read_only=True),
    "seed": param(0, "noise seed", read_only=True),
    "desired_height_fraction": param(
        FollowParams.desired_height_fraction,
        "the follower's desired box height fraction (scales the scenario)",
        limits=(0.01, 1.0),
        read_only=True,
    ),
    "target_height_m": param(PERSON_HEIGHT_M, "height of the simulated people (m)", limits=(0.1, 10.0), read_only=True),
    "physics_rate_hz": param(
        100.0, "simulation steps per second of simulated time", limits=(1.0, 10000.0), read_only=True
    ),
    "pose_rate_hz": param(
        20.0, "rate of the ground-truth pose topics (Hz, simulated time)", limits=(0.1, 1000.0), read_only=True
    ),
    "twist_stamped": param(False, "subscribe geometry_msgs/TwistStamped instead of Twist", read_only=True),
    "cmd_timeout_s": param(
        0.5,
        "the rover stops when cmd_vel is older than this (s), like the base driver",
        limits=(0.01, 60.0),
        read_only=True,
    ),
    "publish_clock": param(
        False, "own the time: publish /clock (use use_sim_time:=true on the other nodes)", read_only=True
    ),
    "real_time_factor": param(
        1.0, "with publish_clock: simulated seconds per wall-clock second", limits=(0.01, 1000.0), read_only=True
    ),
    "camera_frame_id": param("sim_camera", "frame_id of the simulated image / detections", read_only=True),
    "tracking": param(
        True, "track ids in Detection2D.id, as the detector node's tracking does (false: empty ids)", read_only=True
    ),
    "world_frame_id": param("odom", "frame of the ground-truth poses", read_only=True),
    "targets_visible": param(True, "false removes every target from the scene (they walked away)"),
    "detections_enabled": param(True, "false makes the simulated detector silent (no messages)"),
    "paused": param(False, "true freezes the simulation (e.g. start paused until every node is connected)"),
}


# As picar_base: a sender of garbage is named at most this often (the count says how many).
REJECTED_WARNING_INTERVAL_S = 5.0


def _pose(x: float, y: float, yaw: float = 0.0) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y = float(x), float(y)
    pose.orientation.z, pose.orientation.w = math.sin(yaw / 2.0), math.cos(yaw / 2.0)
    return pose


class SimNode(Node):
    """Steps :class:`~ssd_ros.simulation.simulator.Simulator` on a steady timer, publishing detections and poses."""

    def __init__(self):
        """Declare parameters, build the scenario and start the physics timer."""
        super().__init__("follower_sim")
        values = declare_all(self, PARAMETERS)  # start-up values
        get = values.__getitem__
        self.add_on_set_parameters_callback(self._on_set_parameters)

        params = settings_from_mapping(SimParams, values)
        scenario_name = get("scenario")
        if scenario_name not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario_name!r}")
        distance = desired_distance_m(get("target_height_m"), get("desired_height_fraction"), params)
        scenario = make_scenario(scenario_name, distance, params)
        for target in scenario.targets:
            target.height_m = get("target_height_m")
        self.sim = Simulator(params, scenario, seed=get("seed"), tracking=get("tracking"))
        self._camera_frame = get("camera_frame_id")
        self._world_frame = get("world_frame_id")
        self._cmd_timeout_s = get("cmd_timeout_s")
        self._command = (0.0, 0.0)
        self._command_time_s = -math.inf
        self.rejected_nonfinite = 0  # cmd_vel messages with NaN or inf, ignored as picar_base ignores them
        self._paused = get("paused")

        self._publish_clock = get("publish_clock")
        self._physics_dt = 1.0 / get("physics_rate_hz")
        wall_period = self._physics_dt
        if self._publish_clock:
            wall_period = self._physics_dt / get("real_time_factor")
            self.clock_pub = self.create_publisher(ClockMsg, "/clock", 10)
            self._origin_s = 0.0
        else:
            self._origin_s = self.get_clock().now().nanoseconds / 1e9
        self._last_step_s = self._origin_s
        self._pose_period = 1.0 / get("pose_rate_hz")
        self._next_pose_s = 0.0

        self.detections_pub = self.create_publisher(Detection2DArray, "detections", 10)
        self.camera_info_pub = self.create_publisher(CameraInfo, "camera/camera_info", 10)
        self._camera = params.camera
        self.rover_pub = self.create_publisher(PoseStamped, "sim/rover_pose", 10)
        self.targets_pub = self.create_publisher(PoseArray, "sim/target_poses", 10)
        twist_type = TwistStamped if get("twist_stamped") else Twist
        # As picar_base subscribes (best effort, the latest only): a command stream the base takes drives the
        # simulated rover too, and one it would not match does not drive it here either.
        commands = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        self.create_subscription(twist_type, "cmd_vel", self._on_cmd_vel, commands)
        # The physics runs on the steady clock: in publish_clock mode this node *is* the time source.
        self.create_timer(wall_period, self._on_step, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(
            f"scenario '{scenario_name}': {scenario.description}; desired distance {distance:.2f} m; "
            f"{'publishing /clock at x' + str(get('real_time_factor')) if self._publish_clock else 'node clock'}"
        )

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        for parameter in parameters:
            if parameter.name == "targets_visible":
                for target in self.sim.targets:
                    target.visible = bool(parameter.value)
            elif parameter.name == "detections_enabled":
                self.sim.detections_enabled = bool(parameter.value)
            elif parameter.name == "paused":
                self._paused = bool(parameter.value)
        return SetParametersResult(successful=True)

    def _sim_now_s(self) -> float:
        return self._origin_s + self.sim.time

    def _on_cmd_vel(self, msg) -> None:
        command = twist_to_command(msg)
        if not finite_command(command.linear_mps, command.angular_radps):
            # The base's rule: the last good command keeps driving until its timeout, which this does not refresh.
            self.rejected_nonfinite += 1
            self.get_logger().warning(
                f"rejected cmd_vel with non-finite values (linear.x={command.linear_mps}, "
                f"angular.z={command.angular_radps}); {self.rejected_nonfinite} so far",
                throttle_duration_sec=REJECTED_WARNING_INTERVAL_S,
            )
            return
        self._command = (command.linear_mps, command.angular_radps)
        self._command_time_s = self._sim_now_s()

    def _on_step(self) -> None:
        if self._publish_clock:
            dt = 0.0 if self._paused else self._physics_dt
        else:
            # Follow the node clock exactly so stamps are node-clock times despite timer jitter.
            now_s = self.get_clock().now().nanoseconds / 1e9
            dt, self._last_step_s = now_s - self._last_step_s, now_s
            if dt <= 0.0:
                return
            if self._paused:
                self._origin_s += dt  # simulated time stands still; stamps stay node-clock times
                return
        while dt > 1e-9:  # sub-steps, so a late timer does not make one coarse physics step
            step = min(dt, self._physics_dt)
            fresh = self._sim_now_s() - self._command_time_s <= self._cmd_timeout_s
            self.sim.step(*(self._command if fresh else (0.0, 0.0)), step)
            dt -= step
        now = stamp_msg(round(self._sim_now_s() * 1e9))
        if self._publish_clock:
            self.clock_pub.publish(ClockMsg(clock=now))
        for stamp_s, detections in self.sim.poll():
            header = Header(stamp=stamp_msg(round((self._origin_s + stamp_s) * 1e9)), frame_id=self._camera_frame)
            self.camera_info_pub.publish(camera_info_msg(self._camera, header))  # as a camera does with each frame
            self.detections_pub.publish(detections_to_msg(detections, header))
        if self.sim.time + 1e-9 >= self._next_pose_s:
            self._next_pose_s += self._pose_period
            self._publish_poses(now)

    def _publish_poses(self, stamp) -> None:
        rover = self.sim.rover
        header = Header(stamp=stamp, frame_id=self._world_frame)
        self.rover_pub.publish(PoseStamped(header=header, pose=_pose(rover.x, rover.y, rover.yaw)))
        self.targets_pub.publish(PoseArray(header=header, poses=[_pose(x, y) for x, y in self.sim.target_positions()]))


def main(args=None) -> int:
    """Spin the simulator until Ctrl-C / SIGTERM; exit code 1 on invalid start-up parameters."""
    return run_node("follower_sim", SimNode, args=args, parameters=PARAMETERS)


if __name__ == "__main__":
    sys.exit(main())
