"""The ``picar_base`` node: ``cmd_vel`` in, PiCar-B steering servo and drive motor out.

Subscribes ``cmd_vel`` (``geometry_msgs/Twist``, or ``TwistStamped`` with ``twist_stamped:=true``; uses
``linear.x`` and ``angular.z``) and publishes

* ``~/state`` (``std_msgs/Float32MultiArray``, latched: reliable, transient local, depth 1) after every
  change of the outputs: ``[steering_angle_rad, servo_ticks, servo_pulse_us, motor_duty]`` (order in
  ``layout.dim[0].label`` and ``STATE_FIELDS`` here); ticks and duty are read back from the
  hardware (the PCA9685 registers), the pulse is those ticks at the PWM frequency the chip was configured to,
  the angle is the commanded wheel angle; a value that could not be read back is NaN;
* ``/diagnostics`` (``diagnostic_msgs/DiagnosticArray``, ~1 Hz): counters, outputs, command age; ERROR
  while the hardware does not read back the wanted output.

Stops (watchdog, calibration mode, a zero command, shutdown) reach the motor first and are written again
every watchdog period until the hardware reads the motor back as stopped, so an I2C/GPIO fault at the
moment of a stop delays it only as long as the fault lasts. Between writes the hardware is read back every
``VERIFY_PERIOD_S``, so a PCA9685 that reset (brown-out: asleep, outputs off) or whose MODE2 another program
rewrote (outputs inverted, open-drain) is noticed without a new command; the next write configures the chip
again (``PicarHardware.apply``).

The watchdog runs on a steady clock, not ROS time: with ``use_sim_time`` and no ``/clock`` (or a paused
bag) it must still stop the car. Commands are judged by arrival time, not header stamps, so clock skew
between a laptop running the follower and the Pi cannot stop or unstop the car. On Ctrl-C/SIGTERM the node
applies stop + centre, publishes that state, and only then shuts ROS down.
Every parameter that bounds speed, duty, timeouts or the calibration is read-only after start (anyone on the
DDS domain can call ``set_parameters``): restart to change them. Only ``calibration_servo_ticks``, which
stops the motor and holds the servo, can be set at runtime.
"""

from __future__ import annotations

import math
import sys
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import Twist, TwistStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float32MultiArray, MultiArrayDimension

from ssd_ros.ros.messages import LATCHED_QOS, diagnostics_msg
from ssd_ros.ros.params import ParameterTable, dataclass_table, declare_all, param
from ssd_ros.ros.runner import StartupError, run_node
from ssd_ros.ros.silence import cmd_vel_watcher, warn_undeclared_parameters
from ssd_ros.rover.picar_base import (
    ActuatorError,
    Calibration,
    HardwareSettings,
    PicarController,
    PicarHardware,
    PicarOutput,
    Readback,
    open_hardware,
)
from ssd_ros.settings import settings_from_mapping

# Order of the values in the published state (Float32MultiArray; also named in its layout.dim[0].label).
STATE_FIELDS = ("steering_angle_rad", "servo_ticks", "servo_pulse_us", "motor_duty")
DIAGNOSTICS_PERIOD_S = 1.0
WARNING_INTERVAL_S = 5.0
# How often a confirmed output is read back again while nothing is written (MODE1, MODE2, one channel, the motor).
VERIFY_PERIOD_S = 0.2
# How long shutdown keeps writing the final stop while the hardware does not confirm it (a loose I2C cable
# may come back); bounded, because systemd/launch escalate to SIGKILL after their own timeouts.
SHUTDOWN_RETRY_S = 2.0


# Wiring, calibration and limits are the core's settings (description, range and read-only are declared there).
# The one runtime parameter, calibration_servo_ticks, can only stop the motor and hold the servo, never make
# the car move.
PARAMETERS: ParameterTable = {
    **dataclass_table(HardwareSettings),
    "twist_stamped": param(False, "subscribe geometry_msgs/TwistStamped instead of Twist on cmd_vel", read_only=True),
    **dataclass_table(Calibration),
    "calibration_servo_ticks": param(
        -1,
        "calibration aid: >= 0 holds the servo at these ticks with the motor stopped, ignoring cmd_vel; -1 = off",
        limits=(-1, 4095),
    ),
}


class PicarBaseNode(Node):
    """Maps cmd_vel to the PiCar-B steering servo and drive motor, with a watchdog and diagnostics."""

    def __init__(self) -> None:
        super().__init__("picar_base")
        self._values = declare_all(self, PARAMETERS)
        warn_undeclared_parameters(self)
        try:
            settings = settings_from_mapping(HardwareSettings, self._values)
            self._controller = PicarController(settings_from_mapping(Calibration, self._values).config())
        except ValueError as error:
            raise StartupError(str(error)) from error
        try:
            self._hardware: PicarHardware | None = open_hardware(settings)
        except (OSError, RuntimeError, ValueError) as error:  # no bus/chip, missing module, GPIO mode clash
            raise StartupError(f"cannot open {settings.hardware} hardware: {error}") from error
        self._settings = settings
        self._frequency_hz = self._hardware.frequency_hz  # read back once, when open_hardware configured the chip
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._last_error = ""
        self._errors_at_last_diagnostics = 0
        # What the hardware should show, and whether it was read back showing it. A stop that is not
        # confirmed is written again by the watchdog timer until it is.
        self._wanted: PicarOutput = self._controller.last_output
        self._confirmed = False
        self._readback = Readback(None, None, None)  # nothing read yet: the first real readback differs from it
        self._last_readback_s = 0.0

        self._state_pub = self.create_publisher(Float32MultiArray, "~/state", LATCHED_QOS)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._apply(self._controller.last_output)

        # Best effort matches every publisher (reliable teleop, best-effort remote followers); depth 1: only
        # the newest command matters.
        commands = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        self._watch = cmd_vel_watcher(self, self._values["twist_stamped"])
        if self._values["twist_stamped"]:
            self._watch.subscribe(TwistStamped, "cmd_vel", lambda msg: self._on_command(msg.twist), commands)
        else:
            self._watch.subscribe(Twist, "cmd_vel", self._on_command, commands)
        self._watchdog_period_s = min(0.05, self._values["cmd_timeout_s"] / 4)
        self.create_timer(self._watchdog_period_s, self._on_watchdog, clock=self._steady)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics, clock=self._steady)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.get_logger().info(
            f"{settings.hardware} base ready: PCA9685 0x{settings.pca9685_address:02X} on bus {settings.i2c_bus} at "
            f"{self._frequency_hz:.2f} Hz, steering channel {settings.steering_channel}, "
            f"motor via {settings.motor_driver}; watchdog {self._values['cmd_timeout_s']} s"
        )

    # --- commands and watchdog ---------------------------------------------------------------------------
    def _now_s(self) -> float:
        return self._steady.now().nanoseconds * 1e-9

    def _on_command(self, twist: Twist) -> None:
        if self._values["calibration_servo_ticks"] >= 0:
            self._controller.counters.received += 1
            return
        output = self._controller.command(twist.linear.x, twist.angular.z, self._now_s())
        if output is None:
            self._watch.rejected("non-finite linear.x or angular.z; fix the publisher")
        else:
            self._watch.accepted()
        if output is None:
            self.get_logger().warning(
                f"rejected cmd_vel with non-finite values (linear.x={twist.linear.x}, angular.z={twist.angular.z})",
                throttle_duration_sec=WARNING_INTERVAL_S,
            )
            return
        # An identical command is written again while the last one is not confirmed (a retry after a fault).
        if output != self._wanted or not self._confirmed:
            self._apply(output)

    def _on_watchdog(self) -> None:
        output = self._controller.check_watchdog(self._now_s())
        if output is not None:
            self.get_logger().info(f"no cmd_vel for {self._values['cmd_timeout_s']} s: stop and centre")
            self._apply(output)
        elif not self._confirmed and self._wanted.motor_duty == 0.0:
            # A stop the hardware has not confirmed: write it again, every period, until it reads back stopped.
            # (Driving outputs are retried by the next command, which arrives well within the timeout.)
            self._apply(self._wanted)
        elif self._confirmed and self._now_s() - self._last_readback_s >= VERIFY_PERIOD_S:
            self._verify()

    def _verify(self) -> None:
        """Read a confirmed output back again: a chip that reset since the last write shows up as unconfirmed."""
        self._last_readback_s = self._now_s()
        readback = self._hardware.readback()
        if readback.shows(self._wanted):
            return
        self._confirmed = False
        self._controller.counters.hardware_errors += 1
        self._last_error = "; ".join(readback.errors) or "read back differs from the output"
        self.get_logger().warning(
            f"the actuators no longer show the output ({self._wanted.reason}): {self._last_error}",
            throttle_duration_sec=WARNING_INTERVAL_S,
        )
        if readback != self._readback:
            self._readback = readback
            self._publish_state(self._wanted, readback)

    def _apply(self, output: PicarOutput) -> bool:
        """Write ``output``, read the hardware back and publish the state; True when the hardware shows it."""
        self._wanted = output
        try:
            self._hardware.apply(output)
            error = ""
        except ActuatorError as failure:
            error = str(failure)
        readback = self._hardware.readback()
        self._last_readback_s = self._now_s()
        self._confirmed = not error and readback.shows(output)
        if not self._confirmed:
            self._controller.counters.hardware_errors += 1
            self._last_error = error or "; ".join(readback.errors) or "read back differs from the output"
            self.get_logger().warning(
                f"could not drive the actuators ({output.reason}): {self._last_error}; motor reads "
                f"{readback.motor_duty}",
                throttle_duration_sec=WARNING_INTERVAL_S,
            )
        if readback != self._readback or self._confirmed:
            self._readback = readback
            self._publish_state(output, readback)
        return self._confirmed

    def _publish_state(self, output: PicarOutput, readback: Readback) -> None:
        message = Float32MultiArray()
        message.layout.dim = [
            MultiArrayDimension(label=",".join(STATE_FIELDS), size=len(STATE_FIELDS), stride=len(STATE_FIELDS))
        ]
        message.data = [
            float(value) if value is not None else math.nan
            for value in (
                output.steering_angle_rad,
                readback.servo_ticks,
                readback.servo_pulse_us,
                readback.motor_duty,
            )
        ]
        self._state_pub.publish(message)

    # --- parameters --------------------------------------------------------------------------------------
    def _on_set_parameters(self, parameters) -> SetParametersResult:
        # rclpy refuses read-only parameters before this callback runs: only calibration_servo_ticks and rclpy's
        # own writable ones (use_sim_time) get here; those must not rewrite the outputs as a calibration step.
        for parameter in parameters:
            self._values[parameter.name] = parameter.value
        if not any(parameter.name == "calibration_servo_ticks" for parameter in parameters):
            return SetParametersResult(successful=True)
        ticks = self._values["calibration_servo_ticks"]
        if ticks >= 0:
            self._controller.last_command_s = None
            self._apply(PicarOutput(math.nan, ticks, 0.0, "calibration"))
        elif self._controller.last_command_s is None:
            self._apply(self._controller.safe_output("calibration"))
        return SetParametersResult(successful=True)

    # --- diagnostics -------------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        counters = self._controller.counters
        wanted, readback = self._wanted, self._readback
        new_errors = counters.hardware_errors - self._errors_at_last_diagnostics
        self._errors_at_last_diagnostics = counters.hardware_errors
        last_command = self._controller.last_command_s
        if not self._confirmed:
            what = "motor stop" if wanted.motor_duty == 0.0 else "output"
            level, message = (
                DiagnosticStatus.ERROR,
                f"{what} not confirmed by the hardware, retrying ({new_errors} errors): {self._last_error}",
            )
        elif new_errors:
            level, message = DiagnosticStatus.ERROR, f"hardware errors ({new_errors} new): {self._last_error}"
        elif self._values["calibration_servo_ticks"] >= 0:
            level, message = DiagnosticStatus.WARN, "calibration mode: cmd_vel ignored"
        else:
            if last_command is None:
                message = f"stopped (no recent cmd_vel{self._silence()})"
            else:  # a disabled follower streams zeros: commanded, but not driving
                message = "driving" if wanted.motor_duty != 0.0 else "standing still, as cmd_vel asks"
            level = DiagnosticStatus.OK

        def shown(value: float | None, fmt: str) -> str:
            return format(value, fmt) if value is not None else "n/a"

        values = {
            "hardware": self._settings.hardware,
            "motor_driver": self._settings.motor_driver,
            "pwm_frequency_hz": f"{self._frequency_hz:.3f}",
            "pca9685_reconfigurations": str(self._hardware.reconfigurations if self._hardware else "n/a"),
            "wanted_reason": wanted.reason,
            "confirmed": str(self._confirmed),
            "steering_angle_deg": f"{math.degrees(wanted.steering_angle_rad):.2f}",
            "servo_ticks": shown(readback.servo_ticks, "d"),
            "servo_pulse_us": shown(readback.servo_pulse_us, ".1f"),
            "motor_duty": shown(readback.motor_duty, ".3f"),
            "command_age_s": f"{self._now_s() - last_command:.3f}" if last_command is not None else "n/a",
            "cmd_timeout_s": str(self._values["cmd_timeout_s"]),
            "cmd_vel_problem": self._watch.problem or "",
        }
        values.update({f"count_{name}": str(value) for name, value in vars(counters).items()})
        hardware_id = f"pca9685@0x{self._settings.pca9685_address:02X} i2c-{self._settings.i2c_bus}"
        self._diagnostics_pub.publish(diagnostics_msg(self, "PiCar-B base", level, message, hardware_id, values))

    def _silence(self) -> str:
        return f": {self._watch.problem}" if self._watch.problem else ""

    # --- shutdown ----------------------------------------------------------------------------------------
    def stop_safely(self) -> bool:
        """Stop + centre (retried until the hardware confirms it, for up to a few seconds), release, publish.

        Returns whether the hardware confirmed it (a later call: the first call's answer). False makes ``main``
        exit 1, so launch and systemd see a car whose motor or steering may not have stopped.
        """
        if self._hardware is None:
            return self._confirmed
        final = self._controller.safe_output("shutdown")
        deadline = self._now_s() + SHUTDOWN_RETRY_S
        while not self._apply(final) and self._now_s() < deadline:
            time.sleep(self._watchdog_period_s)
        if not self._confirmed:
            stopped = self._readback.motor_duty == 0.0
            what = "the motor stopped but the steering is not centred" if stopped else "the motor may still run"
            self.get_logger().error(f"final stop not confirmed after {SHUTDOWN_RETRY_S} s, {what}: {self._last_error}")
        try:
            self._hardware.close()
        except Exception as error:  # noqa: BLE001 - as in PicarHardware: whatever the driver raises
            self.get_logger().error(f"could not release the hardware: {error}")
        self._hardware = None
        self._state_pub.wait_for_all_acked(Duration(seconds=1.0))
        if self._confirmed:
            self.get_logger().info("stopped: motor off, steering centred")
        return self._confirmed


def main(args=None) -> int:
    """Run the base driver until Ctrl-C/SIGTERM; always end with stop + centre.

    Exit code 1 if it cannot start, or when the hardware did not confirm the final stop + centre.
    """
    return run_node("picar_base", PicarBaseNode, on_stop=PicarBaseNode.stop_safely, args=args, parameters=PARAMETERS)


if __name__ == "__main__":
    sys.exit(main())
