"""follower_sim over DDS, as the car's stand-in: it takes cmd_vel by the base driver's rules."""

import itertools
import math

from conftest import RosProbe, start_executable, stop_process
from geometry_msgs.msg import PoseStamped, Twist
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.time import Time

CMD_TIMEOUT_S = 2.0
SPEED_MPS = 0.5


def twist(linear, angular=0.0):
    message = Twist()
    message.linear.x, message.angular.z = linear, angular
    return message


def test_non_finite_cmd_vel_keeps_the_last_good_command_until_the_timeout_as_the_base_does(tmp_path):
    """A follower that starts sending NaN/inf: picar_base keeps driving on the last good command and stops at its
    timeout (the bad messages do not refresh it), counting them; the simulator must do the same.

    It used to take a non-finite command as a fresh stop: the simulated rover braked at once, where the car drives
    on for ``cmd_timeout_s``.
    """
    log_path = tmp_path / "follower_sim.log"
    process = start_executable(
        "follower_sim",
        "-p",
        "scenario:=static",
        "-p",
        "detections_enabled:=false",
        "-p",
        f"cmd_timeout_s:={CMD_TIMEOUT_S}",
        log_path=log_path,
    )
    try:
        with RosProbe("follower_sim_nan_probe") as probe:
            poses = []  # (stamp in simulated seconds, x)
            probe.node.create_subscription(
                PoseStamped,
                "sim/rover_pose",
                lambda m: poses.append((Time.from_msg(m.header.stamp).nanoseconds * 1e-9, m.pose.position.x)),
                50,
            )
            # As the base and the simulator subscribe: best effort, the newest only.
            teleop = probe.node.create_publisher(
                Twist, "cmd_vel", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
            )

            def speed():
                if len(poses) < 2:
                    return math.nan
                (t0, x0), (t1, x1) = poses[-2:]
                return (x1 - x0) / (t1 - t0)

            def stream(messages, until, what):
                messages = itertools.cycle(messages)

                def publish_then_check():
                    teleop.publish(next(messages))
                    probe.spin_for(0.05)
                    return until()

                probe.spin_until(publish_then_check, 60.0, what, detail=lambda: f"speed {speed()}")

            stream([twist(SPEED_MPS)], lambda: speed() > 0.9 * SPEED_MPS, "the rover driving")
            switch_s, switch_x = poses[-1]
            bad = [twist(math.nan), twist(SPEED_MPS, math.inf), twist(-math.inf, math.nan)]
            stream(bad, lambda: speed() < 0.01, "the rover stopped while only non-finite commands arrive")
            stop_s, stop_x = poses[-1]
    finally:
        stop_process(process, timeout=5)
    log = log_path.read_text()
    print(log[-3000:])
    # On for the timeout after the last good command (which came before the switch), then the motor lag.
    assert stop_x - switch_x > 0.5 * SPEED_MPS * CMD_TIMEOUT_S, f"braked {stop_s - switch_s:.2f} s after the switch"
    assert "rejected cmd_vel with non-finite values (linear.x=nan, angular.z=0.0); 1 so far" in log
