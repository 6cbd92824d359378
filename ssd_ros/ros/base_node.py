"""The ``picar_base`` node: ``cmd_vel`` in, PiCar-B steering servo and drive motor out.

Subscribes ``cmd_vel`` (``geometry_msgs/Twist``, or ``TwistStamped`` with ``twist_stamped:=true``; uses
``linear.x`` and ``angular.z``) and publishes

* ``~/state`` (``std_msgs/Float32MultiArray``, latched: reliable, transient local, depth 1) after every
  change of the outputs: ``[steering_angle_rad, servo_ticks, servo_pulse_us, motor_duty]`` (order in
  ``layout.dim[0].label`` and ``ssd_ros.base.STATE_FIELDS``); ticks, pulse and duty are read back from
  the hardware (the PCA9685 registers), the angle is the commanded wheel angle;
* ``/diagnostics`` (``diagnostic_msgs/DiagnosticArray``, ~1 Hz): counters, outputs, command age.

The watchdog runs on a steady clock, not ROS time: with ``use_sim_time`` and no ``/clock`` (or a paused
bag) it must still stop the car. Commands are judged by arrival time, not header stamps, so clock skew
between a laptop running the follower and the Pi cannot stop or unstop the car. On Ctrl-C/SIGTERM the node
applies stop + centre, publishes that state, and only then shuts ROS down.
Calibration parameters can be changed at runtime (``ros2 param set``); wiring parameters need a restart.
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
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float32MultiArray, MultiArrayDimension

from ssd_ros.base import (
    HARDWARE_KINDS,
    MOTOR_DRIVERS,
    STATE_FIELDS,
    BaseConfig,
    BaseController,
    BaseHardware,
    BaseOutput,
    DriveCalibration,
    HardwareSettings,
    Readback,
    SteeringCalibration,
    open_hardware,
)
from ssd_ros.ros.messages import diagnostics_msg
from ssd_ros.ros.params import ParameterTable, declare_all, param
from ssd_ros.ros.runner import StartupError, run_node

DIAGNOSTICS_PERIOD_S = 1.0
WARNING_INTERVAL_S = 5.0


# Wiring: read once at start (read-only). Defaults are the Adeept PiCar-B's (HardwareSettings; docs/picar_b.md).
_WIRING = HardwareSettings()
WIRING: ParameterTable = {
    "hardware": param(_WIRING.kind, f"actuators: {' | '.join(HARDWARE_KINDS)}", read_only=True),
    "twist_stamped": param(False, "subscribe geometry_msgs/TwistStamped instead of Twist on cmd_vel", read_only=True),
    "i2c_bus": param(_WIRING.i2c_bus, "I2C bus number (/dev/i2c-N)", read_only=True),
    "pca9685_address": param(
        _WIRING.pca9685_address,
        "7-bit I2C address of the PCA9685 (PiCar-B 64 = 0x40; B2 95 = 0x5F)",
        limits=(0x03, 0x77),
        read_only=True,
    ),
    "pwm_frequency_hz": param(
        _WIRING.pwm_frequency_hz,
        "servo PWM frequency; the chip's prescaler quantises it (50 -> 50.03 Hz)",
        limits=(24.0, 1526.0),
        read_only=True,
    ),
    "steering_channel": param(
        _WIRING.steering_channel, "PCA9685 channel of the steering servo", limits=(0, 15), read_only=True
    ),
    "motor_driver": param(
        _WIRING.motor_driver,
        f"drive motor bridge inputs: {' | '.join(MOTOR_DRIVERS)} (gpio: PiCar-B Motor HAT; pca9685: B2)",
        read_only=True,
    ),
    "motor_enable_pin": param(
        _WIRING.motor_enable_pin, "gpio driver: BCM pin of the bridge enable (PWM)", limits=(0, 27), read_only=True
    ),
    "motor_forward_pin": param(
        _WIRING.motor_forward_pin, "gpio driver: BCM pin driven high to go forward", limits=(0, 27), read_only=True
    ),
    "motor_reverse_pin": param(
        _WIRING.motor_reverse_pin, "gpio driver: BCM pin driven high to reverse", limits=(0, 27), read_only=True
    ),
    "motor_pwm_frequency_hz": param(
        _WIRING.motor_pwm_frequency_hz,
        "gpio driver: software PWM frequency on the enable pin",
        limits=(1.0, 20000.0),
        read_only=True,
    ),
    "motor_forward_channel": param(
        _WIRING.motor_forward_channel,
        "pca9685 driver: channel held high to go forward (B2 M1: 15)",
        limits=(0, 15),
        read_only=True,
    ),
    "motor_reverse_channel": param(
        _WIRING.motor_reverse_channel,
        "pca9685 driver: channel held high to reverse (B2 M1: 14)",
        limits=(0, 15),
        read_only=True,
    ),
}

# Calibration and limits: changeable at runtime, validated as a whole before they are used.
CALIBRATION: ParameterTable = {
    "servo_centre_ticks": param(300, "servo ticks (of 4096) with the front wheels straight", limits=(1, 4095)),
    "servo_left_ticks": param(450, "servo ticks with the wheels at max_steering_deg to the left", limits=(1, 4095)),
    "servo_right_ticks": param(150, "servo ticks with the wheels at max_steering_deg to the right", limits=(1, 4095)),
    "max_steering_deg": param(30.0, "front-wheel angle at servo_left_ticks / servo_right_ticks", limits=(1.0, 60.0)),
    "steering_trim_deg": param(
        0.0, "wheel angle added to every command so the car drives straight (positive = left)", limits=(-15.0, 15.0)
    ),
    "wheelbase_m": param(
        0.14, "distance between front and rear axles (PiCar-B: measure; 0.14 is an estimate)", limits=(0.01, 2.0)
    ),
    "speed_at_full_duty_mps": param(
        0.5, "measured forward speed at motor duty 1 (sets the m/s -> duty scale)", limits=(0.01, 20.0)
    ),
    "motor_max_duty": param(1.0, "motor duty cap in (0, 1]", limits=(0.01, 1.0)),
    "motor_min_duty": param(0.0, "smallest duty that moves the car; non-zero commands start here", limits=(0.0, 0.99)),
    "motor_inverted": param(False, "swap forward and reverse (motor wired the other way round)"),
    "cmd_timeout_s": param(
        0.5, "no valid cmd_vel for this long -> motor stop and steering centre", limits=(0.05, 10.0)
    ),
    "calibration_servo_ticks": param(
        -1,
        "calibration aid: >= 0 holds the servo at these ticks with the motor stopped, ignoring cmd_vel; -1 = off",
        limits=(-1, 4095),
    ),
}

PARAMETERS: ParameterTable = {**WIRING, **CALIBRATION}


def base_config(values: dict) -> BaseConfig:
    """Build (and validate) the controller configuration from parameter values; raises ValueError."""
    steering = SteeringCalibration(
        centre_ticks=values["servo_centre_ticks"],
        left_ticks=values["servo_left_ticks"],
        right_ticks=values["servo_right_ticks"],
        max_steering_rad=math.radians(values["max_steering_deg"]),
        trim_rad=math.radians(values["steering_trim_deg"]),
    )
    drive = DriveCalibration(
        speed_at_full_duty_mps=values["speed_at_full_duty_mps"],
        max_duty=values["motor_max_duty"],
        min_duty=values["motor_min_duty"],
        inverted=values["motor_inverted"],
    )
    return BaseConfig(values["wheelbase_m"], steering, drive, values["cmd_timeout_s"])


def hardware_settings(values: dict) -> HardwareSettings:
    """Hardware wiring from parameter values; raises ValueError for unknown kinds or clashing channels."""
    wiring = {field.name: values[field.name] for field in fields(HardwareSettings) if field.name != "kind"}
    return HardwareSettings(kind=values["hardware"], **wiring)


class BaseNode(Node):
    """Maps cmd_vel to the PiCar-B steering servo and drive motor, with a watchdog and diagnostics."""

    def __init__(self) -> None:
        super().__init__("picar_base")
        self._values = declare_all(self, PARAMETERS)
        try:
            settings = hardware_settings(self._values)
            self._controller = BaseController(base_config(self._values))
        except ValueError as error:
            raise StartupError(str(error)) from error
        try:
            self._hardware: BaseHardware | None = open_hardware(settings)
        except (OSError, RuntimeError, ValueError) as error:  # no bus/chip, missing module, GPIO mode clash
            raise StartupError(f"cannot open {settings.kind} hardware: {error}") from error
        self._settings = settings
        self._frequency_hz = self._hardware.pca.frequency_hz()
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._last_error = ""
        self._errors_at_last_diagnostics = 0
        self._last_applied: BaseOutput | None = None  # None until the hardware accepted an output
        self._readback: Readback | None = None

        latched = QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        self._state_pub = self.create_publisher(Float32MultiArray, "~/state", latched)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._apply(self._controller.last_output)

        # Best effort matches every publisher (reliable teleop, best-effort remote followers); depth 1: only
        # the newest command matters.
        commands = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        if self._values["twist_stamped"]:
            self.create_subscription(TwistStamped, "cmd_vel", lambda msg: self._on_command(msg.twist), commands)
        else:
            self.create_subscription(Twist, "cmd_vel", self._on_command, commands)
        period = min(0.05, self._values["cmd_timeout_s"] / 4)
        self._watchdog_timer = self.create_timer(period, self._on_watchdog, clock=self._steady)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics, clock=self._steady)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.get_logger().info(
            f"{settings.kind} base ready: PCA9685 0x{settings.pca9685_address:02X} on bus {settings.i2c_bus} at "
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
            self.get_logger().warning(
                f"rejected cmd_vel with non-finite values (linear.x={twist.linear.x}, angular.z={twist.angular.z})",
                throttle_duration_sec=WARNING_INTERVAL_S,
            )
            return
        if output != self._last_applied:
            self._apply(output)

    def _on_watchdog(self) -> None:
        output = self._controller.check_watchdog(self._now_s())
        if output is not None:
            self.get_logger().info(f"no cmd_vel for {self._values['cmd_timeout_s']} s: stop and centre")
            self._apply(output)

    def _apply(self, output: BaseOutput) -> None:
        try:
            self._hardware.apply(output)
            readback = self._hardware.readback()
        # Any driver error (smbus: OSError, RPi.GPIO: RuntimeError, lgpio: lgpio.error) is counted and retried.
        except Exception as error:  # noqa: BLE001
            # Not remembered as applied, so the next command (even an identical one) retries.
            self._last_applied = None
            self._controller.counters.hardware_errors += 1
            self._last_error = f"{type(error).__name__}: {error}"
            self.get_logger().warning(
                f"could not drive the actuators ({output.reason}): {self._last_error}",
                throttle_duration_sec=WARNING_INTERVAL_S,
            )
            return
        self._last_applied = output
        self._readback = readback
        message = Float32MultiArray()
        message.layout.dim = [
            MultiArrayDimension(label=",".join(STATE_FIELDS), size=len(STATE_FIELDS), stride=len(STATE_FIELDS))
        ]
        message.data = [
            float(output.steering_angle_rad),
            float(readback.servo_ticks),
            float(readback.servo_pulse_us),
            float(readback.motor_duty),
        ]
        self._state_pub.publish(message)

    # --- parameters --------------------------------------------------------------------------------------
    def _on_set_parameters(self, parameters) -> SetParametersResult:
        values = dict(self._values)
        values.update({parameter.name: parameter.value for parameter in parameters})
        try:
            config = base_config(values)
        except ValueError as error:
            return SetParametersResult(successful=False, reason=str(error))
        self._values = values
        self._controller.config = config
        self._watchdog_timer.timer_period_ns = int(min(0.05, config.cmd_timeout_s / 4) * 1e9)
        ticks = values["calibration_servo_ticks"]
        if ticks >= 0:
            self._controller.last_command_s = None
            self._apply(BaseOutput(math.nan, ticks, 0.0, "calibration"))
        elif self._controller.last_command_s is None:
            self._apply(self._controller.safe_output("calibration"))
        return SetParametersResult(successful=True)

    # --- diagnostics -------------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        counters = self._controller.counters
        output, readback = self._last_applied, self._readback
        new_errors = counters.hardware_errors - self._errors_at_last_diagnostics
        self._errors_at_last_diagnostics = counters.hardware_errors
        last_command = self._controller.last_command_s
        if new_errors or output is None:
            level, message = DiagnosticStatus.ERROR, f"hardware errors ({new_errors} new): {self._last_error}"
        elif self._values["calibration_servo_ticks"] >= 0:
            level, message = DiagnosticStatus.WARN, "calibration mode: cmd_vel ignored"
        else:
            level, message = (
                DiagnosticStatus.OK,
                "driving" if last_command is not None else "stopped (no recent cmd_vel)",
            )
        values = {
            "hardware": self._settings.kind,
            "motor_driver": self._settings.motor_driver,
            "pwm_frequency_hz": f"{self._frequency_hz:.3f}",
            "last_output_reason": output.reason if output else "last output not applied",
            "steering_angle_deg": f"{math.degrees(output.steering_angle_rad):.2f}" if output else "n/a",
            "servo_ticks": str(readback.servo_ticks) if readback else "n/a",
            "servo_pulse_us": f"{readback.servo_pulse_us:.1f}" if readback else "n/a",
            "motor_duty": f"{readback.motor_duty:.3f}" if readback else "n/a",
            "command_age_s": f"{self._now_s() - last_command:.3f}" if last_command is not None else "n/a",
            "cmd_timeout_s": str(self._values["cmd_timeout_s"]),
        }
        values.update({f"count_{name}": str(value) for name, value in vars(counters).items()})
        hardware_id = f"pca9685@0x{self._settings.pca9685_address:02X} i2c-{self._settings.i2c_bus}"
        self._diagnostics_pub.publish(diagnostics_msg(self, "PiCar-B base", level, message, hardware_id, values))

    # --- shutdown ----------------------------------------------------------------------------------------
    def stop_safely(self) -> None:
        """Stop + centre, release the hardware, and make sure subscribers got the final state."""
        if self._hardware is None:
            return
        final = self._controller.safe_output("shutdown")
        self._apply(final)
        try:
            self._hardware.close(final)
        except Exception as error:  # noqa: BLE001 - as in _apply: whatever the driver raises
            self.get_logger().error(f"final stop may not have reached the hardware: {error}")
        self._hardware = None
        self._state_pub.wait_for_all_acked(Duration(seconds=1.0))
        self.get_logger().info("stopped: motor off, steering centred")


def main(args=None) -> int:
    """Run the base driver until Ctrl-C/SIGTERM; always end with stop + centre. Exit code 1 if it cannot start."""
    return run_node("picar_base", BaseNode, on_stop=BaseNode.stop_safely, args=args)


if __name__ == "__main__":
    sys.exit(main())
