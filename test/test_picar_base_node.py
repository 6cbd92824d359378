"""The real ``picar_base`` executable on simulated hardware, driven over real ROS 2 topics."""

import dataclasses
import math
import signal
import subprocess
import sys
import time

import pytest
import rclpy
from conftest import REPO_ROOT, RosProbe, ros_env, start_executable, stop_process
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import Twist, TwistStamped
from rcl_interfaces.srv import DescribeParameters, SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float32MultiArray

from ssd_ros.cli import EXECUTOR_ENV
from ssd_ros.ros.picar_base_node import STATE_FIELDS
from ssd_ros.rover.motor import simulated_motor_duty
from ssd_ros.rover.pca9685 import (
    CONFIGURED_MODE2,
    MODE2,
    MODE2_INVRT,
    MODE2_OUTDRV,
    PRE_SCALE,
    output_frequency_hz,
    prescale_for,
)
from ssd_ros.rover.picar_base import Calibration, HardwareSettings

CONFIG = REPO_ROOT / "config" / "picar_base.yaml"
MAX = math.radians(30.0)  # config/picar_base.yaml
WHEELBASE = 0.14
FULL_SPEED = 0.5
TIMEOUT_S = 0.5
WATCHDOG_PERIOD_S = min(0.05, TIMEOUT_S / 4)  # the node's timer period for this timeout
TICK_US = 1e6 / (output_frequency_hz(prescale_for(50.0)) * 4096)


class Harness:
    """Test-side node: publishes cmd_vel, records the driver's state and diagnostics.

    Its node lives in a context of its own, or in ``context`` (where an in-process base driver runs).
    """

    def __init__(self, stamped=False, context=None):
        self.probe = RosProbe("base_node_test", context=context)
        self.node = self.probe.node
        self.stamped = stamped
        self.cmd = self.node.create_publisher(TwistStamped if stamped else Twist, "cmd_vel", 10)
        latched = QoSProfile(
            depth=50, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        self.states = []  # (receive time, dict)
        self.node.create_subscription(Float32MultiArray, "/picar_base/state", self._on_state, latched)
        self.diagnostics = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)

    def _on_state(self, msg):
        assert msg.layout.dim[0].label == ",".join(STATE_FIELDS)
        self.states.append((time.monotonic(), dict(zip(STATE_FIELDS, msg.data))))

    def spin(self, seconds):
        self.probe.spin_for(seconds)

    def wait_for(self, predicate, timeout=10.0, what="condition"):
        self.probe.spin_until(predicate, timeout, what, detail=lambda: f"last state: {self.last}")

    @property
    def last(self):
        return self.states[-1][1] if self.states else None

    def send(self, linear, angular):
        twist = Twist()
        twist.linear.x = float(linear)
        twist.angular.z = float(angular)
        if self.stamped:
            msg = TwistStamped()
            msg.header.stamp = self.node.get_clock().now().to_msg()
            msg.header.frame_id = "base_link"
            msg.twist = twist
            self.cmd.publish(msg)
        else:
            self.cmd.publish(twist)

    def drive(self, linear, angular, seconds=0.6, rate_hz=20.0, until=None):
        """Stream a command like a follower does (faster than the watchdog timeout) for ``seconds``, and on
        until ``until(last state)`` holds: under load the state may arrive later than the streaming ends."""
        end, deadline = time.monotonic() + seconds, time.monotonic() + seconds + 30.0
        while time.monotonic() < end or (until is not None and not (self.last and until(self.last))):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out streaming ({linear}, {angular}); last state: {self.last}")
            self.send(linear, angular)
            self.spin(1.0 / rate_hz)

    def counter(self, name):
        for array in reversed(self.diagnostics):
            for status in array.status:
                if status.name == "/picar_base: PiCar-B base":  # fully qualified: namespaced cars differ
                    return int({kv.key: kv.value for kv in status.values}[f"count_{name}"])
        return None

    def set_parameter(self, name, value):
        request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        return self.probe.call(SetParameters, "/picar_base/set_parameters", request).results[0]

    def close(self):
        self.probe.close()


@pytest.fixture
def ros():
    """The default context, for a PicarBaseNode built in this process."""
    rclpy.init()
    yield
    rclpy.try_shutdown()


def start_base(tmp_path, *params, env=None):
    args = ["--params-file", str(CONFIG), "-p", "hardware:=sim"]
    for param in params:
        args += ["-p", param]
    return start_executable("picar_base", *args, log_path=tmp_path / "picar_base.log", env=env)


def ticks_for_angle(angle):
    """Expected ticks from the calibration in config/picar_base.yaml (centre 300, left 450, right 150)."""
    fraction = max(-1.0, min(1.0, angle / MAX))
    return round(300 + 150 * fraction)


def angular_for(linear, angle):
    """Yaw rate that needs front-wheel ``angle`` at ``linear`` on the bicycle model."""
    return linear * math.tan(angle) / WHEELBASE


def assert_stop_and_centre(state):
    assert state["servo_ticks"] == 300 and state["motor_duty"] == 0.0, state
    assert state["servo_pulse_us"] == pytest.approx(300 * TICK_US, abs=0.01)


def watchdog_stops_shown(harness):
    """Stops in the state stream: a driving motor that reads stopped, while only driving commands are sent.

    So only in a test that never sends a zero: there each such stop is the watchdog's.
    """
    duties = [state["motor_duty"] for _, state in harness.states]
    return sum(1 for before, after in zip(duties, duties[1:]) if before != 0.0 and after == 0.0)


def assert_watchdog_stop(harness):
    """Single commands, then silence: the state must show the stop after TIMEOUT_S and within a bound.

    Not before the timeout: causal, the node cannot have received the last command before it was sent. The
    upper bound is the timeout plus one watchdog period plus three times the worst command -> state latency
    of five single commands measured just before (the last of them is the one that times out): the stop
    travels the same way back, and the watchdog timer runs as late as the command callbacks did. So the
    bound tightens on an idle machine and widens under load.
    """
    # Single best-effort commands are only delivered once the base's subscription matched this publisher.
    harness.wait_for(lambda: harness.cmd.get_subscription_count() > 0, what="cmd_vel subscription matched")
    latencies = []
    for linear in (0.1, 0.15, 0.2, 0.25, 0.3):
        count = len(harness.states)
        sent = time.monotonic()
        harness.send(linear, 0.0)
        duty = linear / FULL_SPEED
        harness.wait_for(
            lambda count=count, duty=duty: (
                len(harness.states) > count and harness.last["motor_duty"] == pytest.approx(duty, abs=1e-6)
            ),
            timeout=30.0,
            what=f"duty {duty}",
        )
        latencies.append(harness.states[-1][0] - sent)
    harness.wait_for(lambda: harness.last["motor_duty"] == 0.0, timeout=30.0, what="the watchdog stop")
    stopped_after = harness.states[-1][0] - sent
    bound = TIMEOUT_S + WATCHDOG_PERIOD_S + 3 * max(latencies)
    assert TIMEOUT_S <= stopped_after <= bound, (stopped_after, latencies)
    assert_stop_and_centre(harness.last)


def test_twist_to_servo_and_motor_with_watchdog_bad_input_and_sigint(tmp_path):
    proc = start_base(tmp_path, f"cmd_timeout_s:={TIMEOUT_S}")
    harness = Harness()
    try:
        harness.wait_for(lambda: harness.last is not None, what="startup state")
        assert_stop_and_centre(harness.last)

        # Half of the steering range to the left at half speed.
        harness.drive(0.25, angular_for(0.25, MAX / 2), until=lambda s: s["servo_ticks"] != 300)
        state = harness.last
        assert state["servo_ticks"] == 375
        assert state["servo_pulse_us"] == pytest.approx(375 * TICK_US, abs=0.01)
        assert state["motor_duty"] == pytest.approx(0.25 / FULL_SPEED, abs=1e-6)
        assert state["steering_angle_rad"] == pytest.approx(MAX / 2, abs=1e-6)

        # Reversing slowly with the wheels a third of the way to the right.
        harness.drive(-0.1, angular_for(-0.1, -MAX / 3), until=lambda s: s["motor_duty"] < 0)
        assert harness.last["servo_ticks"] == ticks_for_angle(-MAX / 3) == 250
        assert harness.last["motor_duty"] == pytest.approx(-0.2, abs=1e-6)

        # Tighter than the car can turn and faster than it can go: clamped to the calibrated limits.
        harness.drive(3.0, -50.0, until=lambda s: s["motor_duty"] > 0)
        assert harness.last["servo_ticks"] == 150 and harness.last["motor_duty"] == 1.0

        # Watchdog: silence -> stop + centre after the timeout, not before.
        assert_watchdog_stop(harness)

        # Non-finite commands are rejected (and do not feed the watchdog); the node keeps running.
        harness.drive(0.2, 0.0, seconds=0.3, until=lambda s: s["motor_duty"] > 0)
        assert harness.last["motor_duty"] == pytest.approx(0.4, abs=1e-6)
        # Garbage streams on until the watchdog has stopped the car: were it fed by garbage, it never would.
        deadline = time.monotonic() + 30.0
        while harness.last["motor_duty"] != 0.0 or time.monotonic() < deadline - 29.0:
            assert time.monotonic() < deadline, "garbage kept the car driving"
            harness.send(math.nan, 0.0)
            harness.spin(0.05)
            harness.send(0.2, math.inf)
            harness.spin(0.05)
        assert_stop_and_centre(harness.last)
        # Both phases above end in a watchdog stop; a stall of the machine longer than the timeout between two
        # commands adds one, which the state shows as well: diagnostics count what the state showed.
        assert watchdog_stops_shown(harness) >= 2
        harness.wait_for(
            lambda: (
                harness.counter("watchdog_stops") == watchdog_stops_shown(harness)
                and (harness.counter("rejected_nonfinite") or 0) >= 15
            ),
            timeout=30.0,
            what="diagnostics counting every watchdog stop and the garbage",
        )
        assert harness.counter("speed_clamped") >= 1 and harness.counter("yaw_rate_limited") >= 1
        assert proc.poll() is None, "bad input must not kill the node"

        # Huge finite values are clamped.
        harness.drive(-1e30, 0.0, seconds=0.3, until=lambda s: s["motor_duty"] < 0)
        assert harness.last["servo_ticks"] == 300 and harness.last["motor_duty"] == -1.0
        harness.drive(0.3, 1e30, seconds=0.3, until=lambda s: s["motor_duty"] > 0)
        assert harness.last["servo_ticks"] == 450 and harness.last["motor_duty"] == pytest.approx(0.6, abs=1e-6)

        # Ctrl-C while driving: the last state is stop + centre and the process exits cleanly.
        harness.drive(0.4, angular_for(0.4, MAX), seconds=0.3, until=lambda s: s["motor_duty"] > 0.6)
        assert harness.last["servo_ticks"] == 450 and harness.last["motor_duty"] > 0
        count = len(harness.states)
        assert stop_process(proc) == 0
        # Published (and acknowledged) before the process exited; it may reach this queue a little later.
        harness.wait_for(lambda: len(harness.states) > count, what="the final state")
        assert_stop_and_centre(harness.last)
    finally:
        stop_process(proc)
        harness.close()
    log = (tmp_path / "picar_base.log").read_text()
    assert "rejected cmd_vel with non-finite values" in log
    assert "Traceback" not in log


def test_dropped_ssh_session_sighup_stops_and_centres(tmp_path):
    """SIGHUP (the terminal went away) must end like Ctrl-C: motor off, wheels straight, exit 0."""
    proc = start_base(tmp_path, f"cmd_timeout_s:={TIMEOUT_S}")
    harness = Harness()
    try:
        harness.wait_for(lambda: harness.last is not None, what="startup state")
        harness.drive(0.4, angular_for(0.4, MAX), seconds=0.3, until=lambda s: s["motor_duty"] > 0)
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=10) == 0
        harness.wait_for(lambda: harness.last["motor_duty"] == 0.0, what="the final state")
        assert_stop_and_centre(harness.last)
    finally:
        stop_process(proc)
        harness.close()
    log = (tmp_path / "picar_base.log").read_text()
    assert "stopped: motor off, steering centred" in log
    assert "spinning with rclpy's EventsExecutor" in log  # the default


def test_the_single_threaded_executor_drives_the_base_and_an_unknown_one_is_refused(tmp_path):
    """SSD_ROS_EXECUTOR=single, the way back from the events executor: commands move the motor, Ctrl-C stops it."""
    proc = start_base(tmp_path, f"cmd_timeout_s:={TIMEOUT_S}", env={EXECUTOR_ENV: "single"})
    harness = Harness()
    try:
        harness.wait_for(lambda: harness.last is not None, what="startup state")
        harness.drive(0.4, 0.0, seconds=0.3, until=lambda s: s["motor_duty"] > 0)
        assert stop_process(proc) == 0
        harness.wait_for(lambda: harness.last["motor_duty"] == 0.0, what="the final state")
        assert_stop_and_centre(harness.last)
    finally:
        stop_process(proc)
        harness.close()
    assert "spinning with rclpy's SingleThreadedExecutor" in (tmp_path / "picar_base.log").read_text()

    proc = start_base(tmp_path, env={EXECUTOR_ENV: "multi"})
    try:
        assert proc.wait(timeout=20) == 1
    finally:
        stop_process(proc)
    log = (tmp_path / "picar_base.log").read_text()
    assert "cannot start: SSD_ROS_EXECUTOR='multi': expected one of events, single" in log and "Traceback" not in log


def test_twist_stamped_b2_motor_on_pca9685_read_only_limits_and_calibration_aid(tmp_path):
    proc = start_base(tmp_path, "twist_stamped:=true", "motor_driver:=pca9685", "cmd_timeout_s:=1.0")
    harness = Harness(stamped=True)
    try:
        harness.wait_for(lambda: harness.last is not None, what="startup state")
        harness.drive(-0.3, angular_for(-0.3, MAX / 2), until=lambda s: s["motor_duty"] < 0)
        # Reversing with the wheels half left; duty quantised to the PCA9685's 12 bits.
        assert harness.last["servo_ticks"] == 375
        assert harness.last["motor_duty"] == pytest.approx(-0.6, abs=1 / 4096)

        # Everything that bounds speed, duty, timeouts or calibration is read-only after start (anyone on the
        # domain could otherwise make any command full duty or the watchdog lazy); wiring too.
        harness.wait_for(lambda: harness.last["motor_duty"] == 0.0, what="watchdog stop")
        for name, value in [
            ("speed_at_full_duty_mps", 0.01),
            ("cmd_timeout_s", 10.0),
            ("motor_max_duty", 0.5),
            ("servo_centre_ticks", 310),
            ("steering_trim_deg", 2.0),
            ("i2c_bus", 3),
        ]:
            refused = harness.set_parameter(name, value)
            assert not refused.successful and "read-only" in refused.reason, (name, refused.reason)
        # ... because the core's settings say so: the node declares them from the dataclass fields.
        core = {f.name: f.metadata for f in dataclasses.fields(Calibration) + dataclasses.fields(HardwareSettings)}
        request = DescribeParameters.Request(names=list(core))
        described = harness.probe.call(DescribeParameters, "/picar_base/describe_parameters", request).descriptors
        assert [d.name for d in described] == list(core)
        for descriptor in described:
            assert descriptor.read_only and descriptor.description == core[descriptor.name]["description"]
            limits = core[descriptor.name]["limits"]
            ranges = descriptor.integer_range or descriptor.floating_point_range
            assert (limits is None) == (not ranges), descriptor.name
            assert limits is None or (ranges[0].from_value, ranges[0].to_value) == limits, descriptor.name
        # Calibration aid: hold the servo at given ticks, cmd_vel ignored, motor stopped.
        assert harness.set_parameter("calibration_servo_ticks", 420).successful
        harness.wait_for(lambda: harness.last["servo_ticks"] == 420, what="calibration ticks")
        harness.drive(0.5, 0.0, seconds=0.3)
        assert harness.last["servo_ticks"] == 420 and harness.last["motor_duty"] == 0.0
        assert harness.set_parameter("calibration_servo_ticks", -1).successful
        harness.wait_for(lambda: harness.last["servo_ticks"] == 300, what="back to centre")

        harness.drive(0.5, 0.0, seconds=0.3, until=lambda s: s["motor_duty"] > 0)
        assert harness.last["motor_duty"] == 1.0 and harness.last["servo_ticks"] == 300
        proc.send_signal(signal.SIGTERM)  # what launch sends when SIGINT is not enough
        assert proc.wait(timeout=10) == 0
        harness.wait_for(lambda: harness.last["motor_duty"] == 0.0, what="the final state")
        assert harness.last["servo_ticks"] == 300
    finally:
        stop_process(proc)
        harness.close()


# The installed driver's main() with one simulated hardware fault added: SIGUSR1 takes the PCA9685 off its bus
# (a loose cable) at the moment the test chooses.
UNPLUGGABLE_BASE = """
import signal, sys
from ssd_ros.ros import picar_base_node


class UnpluggableBase(picar_base_node.PicarBaseNode):
    def __init__(self):
        super().__init__()
        devices = self._hardware.pca.bus.devices
        signal.signal(signal.SIGUSR1, lambda signum, frame: devices.clear())


picar_base_node.PicarBaseNode = UnpluggableBase
sys.exit(picar_base_node.main())
"""


@pytest.mark.parametrize(
    "motor_driver, what",
    [("pca9685", "the motor may still run"), ("gpio", "the motor stopped but the steering is not centred")],
)
def test_final_stop_the_hardware_cannot_confirm_exits_1(tmp_path, motor_driver, what):
    """The PCA9685 drops off the bus while driving; Ctrl-C retries the stop, logs why it failed and exits 1.

    A non-zero exit is what makes a launch (and systemd) report the car as failed. On the B2 the motor bridge is
    on the silent chip; on the PiCar-B the GPIO motor stops, the steering cannot be centred.
    """
    log = tmp_path / "picar_base.log"
    args = ["--params-file", str(CONFIG), "-p", "hardware:=sim", "-p", f"motor_driver:={motor_driver}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", UNPLUGGABLE_BASE, "--ros-args", *args, "-p", f"cmd_timeout_s:={TIMEOUT_S}"],
            env=ros_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    harness = Harness()
    try:
        harness.wait_for(lambda: harness.last is not None, what="startup state")
        harness.drive(0.25, 0.0, until=lambda s: s["motor_duty"] > 0)
        proc.send_signal(signal.SIGUSR1)  # driving, so spinning: the node and its SIGUSR1 handler are up
        # The periodic readback (or the next command) finds the chip silent: its servo reads back unknown.
        harness.drive(0.25, 0.0, until=lambda s: math.isnan(s["servo_ticks"]))
        assert stop_process(proc) == 1
    finally:
        stop_process(proc)
        harness.close()
    text = log.read_text()
    assert f"final stop not confirmed after 2.0 s, {what}" in text and "Traceback" not in text, text


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        (["servo_centre_ticks:=100"], "centre_ticks"),
        # A pin given twice (a typo moving the motor to port B): the enable PWM and a direction level would fight
        # on one pin, and the readback (forward level minus reverse level) would show a stop whatever the motor does.
        (["motor_enable_pin:=15"], "three different pins"),
        (["motor_reverse_pin:=15"], "three different pins"),
        # No PCA9685 (and no /dev/i2c-1) on this machine: the real hardware path must say so and exit.
        (["hardware:=picar_b", "i2c_bus:=99"], "cannot open picar_b hardware"),
    ],
)
def test_bad_configuration_fails_fast_with_a_reason(tmp_path, params, reason):
    args = ["--params-file", str(CONFIG)] + [arg for param in params for arg in ("-p", param)]
    proc = start_executable("picar_base", *args, log_path=tmp_path / "picar_base.log")
    try:
        assert proc.wait(timeout=20) == 1
    finally:
        stop_process(proc)
    log = (tmp_path / "picar_base.log").read_text()
    assert "cannot start" in log and reason in log and "Traceback" not in log


def test_i2c_failure_is_counted_and_retried_in_process(ros):
    """A PCA9685 that stops answering (loose cable) is an error in diagnostics, not a dead node."""
    from ssd_ros.ros.picar_base_node import PicarBaseNode

    node = PicarBaseNode()  # defaults: hardware sim, GPIO motor
    try:
        bus = node._hardware.pca.bus
        chip = bus.devices[0x40]
        command = Twist()
        command.linear.x = 0.25
        command.angular.z = angular_for(0.25, MAX)
        bus.devices.clear()  # the chip stops acknowledging
        node._on_command(command)
        assert node._controller.counters.hardware_errors == 1 and chip.high_ticks(2) == 300
        bus.devices[0x40] = chip
        node._on_command(command)  # the identical command is retried, not skipped
        assert chip.high_ticks(2) == 450 and node._controller.counters.hardware_errors == 1
    finally:
        confirmed = node.stop_safely()
        node.destroy_node()
    assert confirmed and chip.high_ticks(2) == 300, "stop_safely centres the servo and says so"


def test_watchdog_runs_on_the_steady_clock_with_sim_time_and_no_clock(tmp_path):
    """use_sim_time with nobody publishing /clock (a paused or forgotten bag): ROS time stands at 0.

    A watchdog on the ROS clock would never fire here; the steady clock stops the car after the timeout.
    """
    proc = start_base(tmp_path, f"cmd_timeout_s:={TIMEOUT_S}", "use_sim_time:=true")
    harness = Harness()
    try:
        harness.wait_for(lambda: harness.last is not None, what="startup state")
        assert not harness.node.count_publishers("/clock")
        for _ in range(2):  # twice: the watchdog re-arms after a stop
            assert_watchdog_stop(harness)
    finally:
        stop_process(proc)
        harness.close()


class InProcessBase:
    """A real ``PicarBaseNode`` on simulated hardware in this process, fed over DDS, so the test can break its bus.

    The simulated PCA9685 stops acknowledging when removed from the bus (``OSError`` 121, as a loose cable).
    """

    def __init__(self, motor_driver, timeout_s=0.3):
        from ssd_ros.ros.picar_base_node import PicarBaseNode

        rclpy.init(args=["--ros-args", "-p", f"motor_driver:={motor_driver}", "-p", f"cmd_timeout_s:={timeout_s}"])
        self.node = PicarBaseNode()
        self.harness = Harness(context=rclpy.get_default_context())
        self.probe = self.harness.probe
        self.probe.executor.add_node(self.node)  # spun together with the test's node
        hardware = self.node._hardware
        self.hardware, self.bus, self.chip = hardware, hardware.pca.bus, hardware.simulation.chip
        self.gpio = hardware.simulation.gpio

    def motor_duty(self):
        """The signed duty at the motor terminals, from the simulated pins (not from the driver's readback)."""
        if self.gpio is not None:
            return simulated_motor_duty(self.gpio, self.hardware.motor)
        return self.chip.duty(15) - self.chip.duty(14)

    def spin_until(self, predicate, timeout, what):
        self.probe.spin_until(predicate, timeout, what, detail=lambda: f"motor duty {self.motor_duty()}")

    def spin(self, seconds):
        self.probe.spin_for(seconds)

    def drive(self, linear, seconds, until=lambda: True, what="the command's effect"):
        """Stream ``linear`` at 20 Hz for ``seconds``, and on until ``until()`` holds (DDS may lag under load)."""
        end, deadline = time.monotonic() + seconds, time.monotonic() + seconds + 30.0
        while time.monotonic() < end or not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out streaming commands for {what}; motor duty {self.motor_duty()}")
            self.harness.send(linear, 0.0)
            self.spin(0.05)

    def in_error(self):
        """Whether the newest base diagnostics are at ERROR level."""
        newest = self.diagnostics()
        return newest is not None and newest[0] == DiagnosticStatus.ERROR

    def diagnostics(self):
        """(level, message, values) of the newest base diagnostics."""
        for array in reversed(self.harness.diagnostics):
            for status in array.status:
                if status.name.endswith("PiCar-B base"):
                    return status.level, status.message, {kv.key: kv.value for kv in status.values}
        return None

    def close(self):
        self.node.stop_safely()
        self.harness.close()
        self.node.destroy_node()
        rclpy.try_shutdown()


@pytest.fixture
def base_in_process(request):
    bases = []

    def make(motor_driver):
        bases.append(InProcessBase(motor_driver))
        return bases[-1]

    yield make
    for base in bases:
        base.close()


def test_diagnostics_tell_driving_from_a_stream_of_zero_commands(base_in_process):
    """A disabled follower streams zeros: the base says it stands still as asked, not that it is driving."""
    base = base_in_process("gpio")

    def message(text):
        return lambda: (base.diagnostics() or (None, ""))[1] == text

    base.drive(0.25, 0.3, until=message("driving"), what="diagnostics saying driving")
    base.drive(0.0, 0.3, until=message("standing still, as cmd_vel asks"), what="diagnostics saying standing still")
    assert base.motor_duty() == 0.0


@pytest.mark.parametrize("motor_driver", ["gpio", "pca9685"])
def test_i2c_fault_when_the_watchdog_fires_stops_the_motor_once_possible(base_in_process, motor_driver):
    """The PCA9685 stops answering for a while exactly when the watchdog fires (transient fault)."""
    base = base_in_process(motor_driver)
    base.drive(0.25, 0.3, until=lambda: base.motor_duty() == pytest.approx(0.5, abs=1 / 4096), what="driving")
    chip = base.bus.devices.pop(0x40)
    counters = base.node._controller.counters
    base.spin_until(lambda: counters.watchdog_stops == 1, 30.0, "the watchdog")
    if motor_driver == "gpio":
        # PiCar-B: the motor is on GPIO, the stop reaches it although the servo write fails.
        assert base.motor_duty() == 0.0
    else:
        # B2: the bridge inputs are on the silent chip; nothing can stop it yet, diagnostics say so.
        assert base.motor_duty() == pytest.approx(0.5, abs=1 / 4096)
    base.spin_until(base.in_error, 30.0, "diagnostics ERROR")
    level, message, values = base.diagnostics()
    assert "motor stop not confirmed" in message and "Remote I/O error" in message
    assert values["confirmed"] == "False" and values["wanted_reason"] == "watchdog"
    errors = counters.hardware_errors
    base.spin_until(lambda: counters.hardware_errors >= errors + 3, 30.0, "retries while the chip is silent")

    base.bus.devices[0x40] = chip  # the cable is back; no command arrives, only the retry can stop it
    base.spin_until(lambda: base.motor_duty() == 0.0 and chip.high_ticks(2) == 300, 30.0, "the retried stop")
    base.spin_until(lambda: base.harness.last["servo_ticks"] == 300, 30.0, "stopped and centred state")
    assert_stop_and_centre(base.harness.last)
    base.spin_until(lambda: base.diagnostics()[2]["confirmed"] == "True", 30.0, "confirmed in diagnostics")
    retries = counters.hardware_errors
    base.spin(0.3)
    assert counters.hardware_errors == retries, "no more writes once the hardware confirmed the stop"


@pytest.mark.parametrize("motor_driver", ["gpio", "pca9685"])
def test_permanent_i2c_loss_during_zero_commands(base_in_process, motor_driver):
    """I2C gone for good while a follower sends zero commands: the GPIO motor stops, the B2 reports ERROR."""
    base = base_in_process(motor_driver)
    base.drive(0.25, 0.3, until=lambda: base.motor_duty() == pytest.approx(0.5, abs=1 / 4096), what="driving")
    base.bus.devices.clear()
    counters = base.node._controller.counters
    received = counters.received
    # Zero commands keep arriving (they also keep the watchdog from firing), at least ten of them.
    base.drive(0.0, 1.0, until=lambda: counters.received >= received + 10, what="ten zero commands")
    assert counters.watchdog_stops == 0
    assert base.motor_duty() == (0.0 if motor_driver == "gpio" else pytest.approx(0.5, abs=1 / 4096))
    base.spin_until(base.in_error, 30.0, "diagnostics ERROR")
    assert "motor stop not confirmed" in base.diagnostics()[1]
    if motor_driver == "gpio":
        # The state still reports what can be read: the motor stopped, the servo unknown (NaN).
        base.spin_until(lambda: base.harness.last["motor_duty"] == 0.0, 30.0, "stopped state")
        assert math.isnan(base.harness.last["servo_ticks"]) and math.isnan(base.harness.last["servo_pulse_us"])
    # A driving command while the steering cannot be written does not drive.
    received = counters.received
    base.drive(0.25, 0.3, until=lambda: counters.received >= received + 3, what="driving commands")
    assert base.motor_duty() == (0.0 if motor_driver == "gpio" else pytest.approx(0.5, abs=1 / 4096))
    # Shutdown keeps trying for a bounded time, says the stop is unconfirmed (main exits 1 on it), and returns.
    started = time.monotonic()
    assert not base.node.stop_safely()
    assert time.monotonic() - started < 10.0


@pytest.mark.parametrize("motor_driver", ["gpio", "pca9685"])
def test_pca9685_reset_while_driving_is_reported_and_recovered(base_in_process, motor_driver):
    """A brown-out resets the chip while identical commands stream: ERROR naming it, then reconfigured at 50 Hz."""
    base = base_in_process(motor_driver)
    base.drive(0.25, 0.3, until=lambda: base.motor_duty() == pytest.approx(0.5, abs=1 / 4096), what="driving")
    counters = base.node._controller.counters
    errors = counters.hardware_errors
    base.chip.power_on_reset()
    assert base.chip.high_ticks(2) == 0 and base.chip.read(PRE_SCALE) == 0x1E
    # The same command keeps arriving; the periodic readback notices the reset and the next command recovers.
    base.drive(
        0.25,
        0.3,
        until=lambda: base.hardware.reconfigurations == 1 and base.motor_duty() == pytest.approx(0.5, abs=1 / 4096),
        what="the chip configured again",
    )
    assert counters.hardware_errors > errors
    assert base.chip.read(PRE_SCALE) == prescale_for(50.0) and base.chip.high_ticks(2) == 300
    assert base.chip.output_frequency_hz() == pytest.approx(output_frequency_hz(prescale_for(50.0)))
    base.spin_until(base.in_error, 30.0, "diagnostics ERROR")
    level, message, values = base.diagnostics()
    assert "PCA9685 asleep (reset or brown-out?): outputs off" in message
    base.spin_until(lambda: base.diagnostics()[2]["pca9685_reconfigurations"] == "1", 30.0, "reconfiguration count")
    base.spin_until(lambda: base.harness.last["servo_ticks"] == 300, 30.0, "state with the servo read back")
    assert base.node._confirmed


@pytest.mark.parametrize("motor_driver", ["gpio", "pca9685"])
def test_pca9685_mode2_rewritten_while_driving_is_reported_and_recovered(base_in_process, motor_driver):
    """Another program sets MODE2.INVRT while driving: the servo pin holds full lock although its registers say
    centre. ERROR naming MODE2 and the bit, then configured again by the next command, as after a brown-out.

    The readback read MODE1 only, so the base confirmed the drive and kept the wheels at full lock.
    """
    base = base_in_process(motor_driver)
    base.drive(0.25, 0.3, until=lambda: base.motor_duty() == pytest.approx(0.5, abs=1 / 4096), what="driving")
    counters = base.node._controller.counters
    errors = counters.hardware_errors
    base.bus.write_byte_data(base.hardware.pca.address, MODE2, MODE2_OUTDRV | MODE2_INVRT)
    assert base.chip.high_ticks(2) == 4096 - 300
    base.drive(
        0.25,
        0.3,
        until=lambda: base.hardware.reconfigurations == 1 and base.chip.high_ticks(2) == 300,
        what="the chip configured again",
    )
    assert counters.hardware_errors > errors and base.chip.read(MODE2) == CONFIGURED_MODE2
    assert base.motor_duty() == pytest.approx(0.5, abs=1 / 4096)
    base.spin_until(base.in_error, 30.0, "diagnostics ERROR")
    message = base.diagnostics()[1]
    assert "PCA9685 MODE2 rewritten" in message and "INVRT set" in message and "MODE2 0x14" in message
    base.spin_until(lambda: base.diagnostics()[2]["pca9685_reconfigurations"] == "1", 30.0, "reconfiguration count")
    assert base.node._confirmed


def test_setting_another_parameter_is_no_calibration_step(ros):
    """``use_sim_time`` (writable on every node) must not rewrite the outputs as a "calibration" stop."""
    from ssd_ros.ros.picar_base_node import PicarBaseNode

    node = PicarBaseNode()
    try:
        before = node._wanted
        assert node.set_parameters([Parameter("use_sim_time", value=True)])[0].successful
        assert node._wanted == before and node._wanted.reason == "startup"
        assert node.set_parameters([Parameter("calibration_servo_ticks", value=320)])[0].successful
        assert node._wanted.servo_ticks == 320 and node._wanted.reason == "calibration"
    finally:
        node.stop_safely()
        node.destroy_node()
