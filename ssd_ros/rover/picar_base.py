"""PiCar-B base driver core: velocity command -> steering servo ticks + drive motor duty, with a watchdog.

No ROS here. ``PicarController`` turns ``(linear m/s, angular rad/s)`` into a ``PicarOutput`` using the shared
Ackermann relation in :mod:`ssd_ros.control.ackermann`, the servo calibration (ticks at centre and at the left/right
steering limits) and the drive calibration (speed at full duty). It rejects non-finite commands, clamps
out-of-range ones, counts both, and falls back to "stop + centre" when commands stop arriving.
``PicarHardware`` applies outputs to a PCA9685 steering channel and a motor port and reads them back;
``open_hardware`` builds it for the real car or for the register-level simulation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ssd_ros.control.ackermann import limit_angular, steering_angle
from ssd_ros.control.geometry import RoverGeometry
from ssd_ros.rover.motor import GpioMotor, MotorPort, Pca9685Motor, SimulatedGpio, import_rpi_gpio
from ssd_ros.rover.pca9685 import (
    TICKS_PER_PERIOD,
    I2cBus,
    Pca9685,
    Pca9685NotRunning,
    SimulatedI2cBus,
    SimulatedPca9685,
    open_smbus,
    ticks_to_us,
)
from ssd_ros.settings import Settings, setting

HARDWARE_KINDS = ("sim", "picar_b")
MOTOR_DRIVERS = ("gpio", "pca9685")


@dataclass(frozen=True)
class SteeringCalibration:
    """Servo ticks (PCA9685 counts out of 4096) at the wheel positions that were measured on the car.

    ``left_ticks``/``right_ticks`` are the ticks at which the front wheels reach ``max_steering_rad`` to the
    left/right; they may lie on either side of ``centre_ticks`` (the servo horn orientation decides). In
    between the mapping is linear on each side, so unequal left and right travel is fine.
    ``trim_rad`` is the wheel angle the car needs to drive straight (added to every command).
    """

    centre_ticks: int
    left_ticks: int
    right_ticks: int
    max_steering_rad: float
    trim_rad: float = 0.0

    def __post_init__(self):
        """Reject calibrations that cannot be right."""
        for name in ("centre_ticks", "left_ticks", "right_ticks"):
            value = getattr(self, name)
            if not 0 < value < TICKS_PER_PERIOD:
                raise ValueError(f"{name} must be within 1..{TICKS_PER_PERIOD - 1}, got {value}")
        low, high = sorted((self.left_ticks, self.right_ticks))
        if not low < self.centre_ticks < high:
            raise ValueError(
                f"centre_ticks ({self.centre_ticks}) must lie strictly between left_ticks ({self.left_ticks}) "
                f"and right_ticks ({self.right_ticks})"
            )
        if not 0 < self.max_steering_rad < math.pi / 2:
            raise ValueError(f"max steering angle must be within (0, 90) degrees, got {self.max_steering_rad} rad")
        if not abs(self.trim_rad) < self.max_steering_rad:
            raise ValueError("steering trim must be smaller than the max steering angle")

    def ticks_for(self, angle_rad: float) -> int:
        """Servo ticks for a wheel angle (positive = left), clamped to the calibrated limits."""
        fraction = max(-1.0, min(1.0, angle_rad / self.max_steering_rad))
        limit = self.left_ticks if fraction >= 0 else self.right_ticks
        return round(self.centre_ticks + (limit - self.centre_ticks) * abs(fraction))


@dataclass(frozen=True)
class DriveCalibration:
    """Linear speed -> signed motor duty.

    ``speed_at_full_duty_mps`` is the measured speed at duty 1 (the mapping is linear through zero);
    ``min_duty`` is the smallest duty that still turns the wheels (non-zero commands start there);
    ``max_duty`` caps the output; ``inverted`` swaps forward and reverse for a motor wired the other way.
    """

    speed_at_full_duty_mps: float
    max_duty: float = 1.0
    min_duty: float = 0.0
    inverted: bool = False

    def __post_init__(self):
        """Reject calibrations that cannot be right."""
        if not self.speed_at_full_duty_mps > 0:
            raise ValueError(f"speed at full duty must be positive, got {self.speed_at_full_duty_mps}")
        if not 0 < self.max_duty <= 1:
            raise ValueError(f"max duty must be within (0, 1], got {self.max_duty}")
        if not 0 <= self.min_duty < self.max_duty:
            raise ValueError(f"min duty must be within [0, max duty), got {self.min_duty}")

    def duty_for(self, linear_mps: float) -> tuple[float, bool]:
        """(signed duty, whether it had to be clamped to ``max_duty``) for a finite speed."""
        wanted = linear_mps / self.speed_at_full_duty_mps
        magnitude = abs(wanted)
        if magnitude == 0.0:
            return 0.0, False
        clamped = magnitude > self.max_duty
        magnitude = min(magnitude, self.max_duty)
        # Stretch (0, max] onto [min_duty, max] so small commands still move the car.
        magnitude = self.min_duty + (self.max_duty - self.min_duty) * magnitude / self.max_duty
        sign = -1.0 if (wanted < 0) != self.inverted else 1.0
        return sign * magnitude, clamped


@dataclass(frozen=True)
class PicarConfig:
    """Everything the controller needs: geometry, calibrations and the command timeout."""

    wheelbase_m: float
    steering: SteeringCalibration
    drive: DriveCalibration
    cmd_timeout_s: float = 0.5

    def __post_init__(self):
        """Reject impossible geometry or timeouts."""
        if not self.wheelbase_m > 0:
            raise ValueError(f"wheelbase must be positive, got {self.wheelbase_m}")
        if not self.cmd_timeout_s > 0:
            raise ValueError(f"command timeout must be positive, got {self.cmd_timeout_s}")


@dataclass(frozen=True)
class Calibration(RoverGeometry):
    """The car's calibration and limits in the units they are measured in; :meth:`config` is the controller's.

    Wheelbase and steering limit are the rover's geometry (:class:`~ssd_ros.control.geometry.RoverGeometry`,
    whose camera fields the base does not use). The base node declares these as read-only parameters: each of
    them can make the car faster or blind to a lost sender (speed_at_full_duty_mps 0.01 turns any command into
    full duty), so nobody on the DDS domain may change them at runtime.
    """

    servo_centre_ticks: int = setting(
        300, "servo ticks (of 4096) with the front wheels straight", limits=(1, 4095), read_only=True
    )
    servo_left_ticks: int = setting(
        450, "servo ticks with the wheels at max_steering_deg to the left", limits=(1, 4095), read_only=True
    )
    servo_right_ticks: int = setting(
        150, "servo ticks with the wheels at max_steering_deg to the right", limits=(1, 4095), read_only=True
    )
    steering_trim_deg: float = setting(
        0.0,
        "wheel angle added to every command so the car drives straight (positive = left)",
        limits=(-15.0, 15.0),
        read_only=True,
    )
    speed_at_full_duty_mps: float = setting(
        0.5, "measured forward speed at motor duty 1 (sets the m/s -> duty scale)", limits=(0.01, 20.0), read_only=True
    )
    motor_max_duty: float = setting(1.0, "motor duty cap in (0, 1]", limits=(0.01, 1.0), read_only=True)
    motor_min_duty: float = setting(
        0.0, "smallest duty that moves the car; non-zero commands start here", limits=(0.0, 0.99), read_only=True
    )
    motor_inverted: bool = setting(False, "swap forward and reverse (motor wired the other way round)", read_only=True)
    cmd_timeout_s: float = setting(
        0.5, "no valid cmd_vel for this long -> motor stop and steering centre", limits=(0.05, 10.0), read_only=True
    )

    def check(self) -> None:
        """Reject a calibration that cannot be right (the servo's centre outside its limits, a trim past them)."""
        self.config()

    def config(self) -> PicarConfig:
        """The controller's configuration; raises ValueError for a calibration that cannot be right."""
        steering = SteeringCalibration(
            centre_ticks=self.servo_centre_ticks,
            left_ticks=self.servo_left_ticks,
            right_ticks=self.servo_right_ticks,
            max_steering_rad=math.radians(self.max_steering_deg),
            trim_rad=math.radians(self.steering_trim_deg),
        )
        drive = DriveCalibration(
            speed_at_full_duty_mps=self.speed_at_full_duty_mps,
            max_duty=self.motor_max_duty,
            min_duty=self.motor_min_duty,
            inverted=self.motor_inverted,
        )
        return PicarConfig(self.wheelbase_m, steering, drive, self.cmd_timeout_s)


def finite_command(linear_mps: float, angular_radps: float) -> bool:
    """Whether the base takes a velocity command: only when both values are finite.

    A command with NaN or inf is counted and otherwise ignored: the last good command stays in force and the
    command timeout is not refreshed, so a sender of nothing but garbage is stopped after ``cmd_timeout_s``
    like a silent one. ``PicarController.command`` applies this rule, and the follower simulator standing in
    for the base applies the same.
    """
    return math.isfinite(linear_mps) and math.isfinite(angular_radps)


@dataclass(frozen=True)
class PicarOutput:
    """What the hardware is told: wheel angle (rad, left positive), servo ticks, signed motor duty, and why."""

    steering_angle_rad: float
    servo_ticks: int
    motor_duty: float
    reason: str  # "command", "startup", "watchdog" or "shutdown"


@dataclass
class PicarCounters:
    """Running totals reported in diagnostics."""

    received: int = 0
    applied: int = 0
    rejected_nonfinite: int = 0
    speed_clamped: int = 0
    yaw_rate_limited: int = 0
    watchdog_stops: int = 0
    hardware_errors: int = 0


@dataclass
class PicarController:
    """Command mapping plus the watchdog; time is passed in (seconds on any monotonic clock)."""

    config: PicarConfig
    counters: PicarCounters = field(default_factory=PicarCounters)

    def __post_init__(self):
        """Start stopped and centred, as if a watchdog stop had just happened."""
        self.last_output = self.safe_output("startup")
        self.last_command_s: float | None = None

    def safe_output(self, reason: str) -> PicarOutput:
        """Motor stopped, wheels straight (centre plus trim)."""
        steering = self.config.steering
        return PicarOutput(steering.trim_rad, steering.ticks_for(steering.trim_rad), 0.0, reason)

    def command(self, linear_mps: float, angular_radps: float, now_s: float) -> PicarOutput | None:
        """Map a velocity command; returns None (and counts it) for a non-finite command, which is ignored.

        A rejected command does not refresh the watchdog, so a sender that only produces garbage is stopped
        after ``cmd_timeout_s`` like a silent one.
        """
        self.counters.received += 1
        if not finite_command(linear_mps, angular_radps):
            self.counters.rejected_nonfinite += 1
            return None
        config = self.config
        steering = config.steering
        angle = steering_angle(linear_mps, angular_radps, config.wheelbase_m, steering.max_steering_rad)
        achievable = limit_angular(linear_mps, angular_radps, config.wheelbase_m, steering.max_steering_rad)
        if not math.isclose(achievable, angular_radps, rel_tol=1e-6, abs_tol=1e-9):
            self.counters.yaw_rate_limited += 1
        angle = max(-steering.max_steering_rad, min(steering.max_steering_rad, angle + steering.trim_rad))
        duty, clamped = config.drive.duty_for(linear_mps)
        if clamped:
            self.counters.speed_clamped += 1
        self.last_command_s = now_s
        self.last_output = PicarOutput(angle, steering.ticks_for(angle), duty, "command")
        self.counters.applied += 1
        return self.last_output

    def check_watchdog(self, now_s: float) -> PicarOutput | None:
        """The stop output once when commands have been missing for longer than the timeout, else None."""
        if self.last_command_s is None or now_s - self.last_command_s <= self.config.cmd_timeout_s:
            return None
        self.last_command_s = None
        self.counters.watchdog_stops += 1
        self.last_output = self.safe_output("watchdog")
        return self.last_output


@dataclass(frozen=True)
class HardwareSettings(Settings):
    """Where the PiCar-B's actuators are (defaults: Adeept PiCar-B, see docs/picar_b.md for sources).

    The base node declares these as read-only parameters: they are read once, when the hardware opens.
    """

    hardware: str = setting("sim", "actuators", choices=HARDWARE_KINDS, read_only=True)
    i2c_bus: int = setting(1, "I2C bus number (/dev/i2c-N)", limits=(0, 255), read_only=True)
    pca9685_address: int = setting(
        0x40, "7-bit I2C address of the PCA9685 (PiCar-B 64 = 0x40; B2 95 = 0x5F)", limits=(0x03, 0x77), read_only=True
    )
    pwm_frequency_hz: float = setting(
        50.0,
        "servo PWM frequency; the chip's prescaler quantises it (50 -> 50.03 Hz)",
        limits=(24.0, 1526.0),
        read_only=True,
    )
    steering_channel: int = setting(2, "PCA9685 channel of the steering servo", limits=(0, 15), read_only=True)
    motor_driver: str = setting(
        "gpio",
        "drive motor bridge inputs (gpio: PiCar-B Motor HAT; pca9685: B2)",
        choices=MOTOR_DRIVERS,
        read_only=True,
    )
    motor_enable_pin: int = setting(
        4, "gpio driver: BCM pin of the bridge enable (PWM)", limits=(0, 27), read_only=True
    )
    motor_forward_pin: int = setting(
        15, "gpio driver: BCM pin driven high to go forward", limits=(0, 27), read_only=True
    )
    motor_reverse_pin: int = setting(14, "gpio driver: BCM pin driven high to reverse", limits=(0, 27), read_only=True)
    motor_pwm_frequency_hz: float = setting(
        1000.0, "gpio driver: software PWM frequency on the enable pin", limits=(1.0, 20000.0), read_only=True
    )
    motor_forward_channel: int = setting(
        15, "pca9685 driver: channel held high to go forward (B2 M1: 15)", limits=(0, 15), read_only=True
    )
    motor_reverse_channel: int = setting(
        14, "pca9685 driver: channel held high to reverse (B2 M1: 14)", limits=(0, 15), read_only=True
    )

    def check(self) -> None:
        """Reject channel and pin clashes before touching any hardware."""
        if self.motor_driver == "pca9685" and self.steering_channel in (
            self.motor_forward_channel,
            self.motor_reverse_channel,
        ):
            raise ValueError("the steering channel must not be one of the motor channels")
        pins = (self.motor_enable_pin, self.motor_forward_pin, self.motor_reverse_pin)
        if self.motor_driver == "gpio" and len(set(pins)) != len(pins):
            # One pin in two roles: the enable PWM and a direction level fight over it, and the readback (forward
            # level minus reverse level) can show a stop whatever the motor does.
            raise ValueError(
                "motor_enable_pin, motor_forward_pin and motor_reverse_pin must be three different pins, got "
                f"{self.motor_enable_pin}, {self.motor_forward_pin}, {self.motor_reverse_pin}"
            )


@dataclass
class Readback:
    """What the actuators report: servo ticks and pulse width from the chip's registers, motor duty.

    A part that could not be read is None, and ``errors`` says why (one entry per failed part). A part on a
    PCA9685 whose MODE1 or MODE2 says its pins do not produce its registers (asleep after a reset or brown-out,
    outputs inverted or open-drain; see :func:`ssd_ros.rover.pca9685.mode1_fault` and
    :func:`~ssd_ros.rover.pca9685.mode2_fault`) is None too: its registers are not what the pins do.
    """

    servo_ticks: int | None
    servo_pulse_us: float | None
    motor_duty: float | None
    errors: list[str] = field(default_factory=list)

    def shows(self, output: PicarOutput) -> bool:
        """True when the hardware reads back exactly ``output``'s servo ticks and motor duty.

        Duty is compared to the PCA9685's 12-bit resolution (the B2 motor's duty is quantised to ticks); a
        stop is exactly 0 on both motor drivers.
        """
        if self.servo_ticks is None or self.motor_duty is None or self.servo_ticks != output.servo_ticks:
            return False
        if output.motor_duty == 0.0:
            return self.motor_duty == 0.0
        return abs(self.motor_duty - output.motor_duty) <= 0.5 / TICKS_PER_PERIOD


class ActuatorError(Exception):
    """One or more actuator writes failed; ``errors`` maps "motor"/"servo"/"pca9685" to the driver's exception.

    "pca9685" is the chip's reconfiguration after a reset (see ``PicarHardware.apply``).
    """

    def __init__(self, errors: dict[str, Exception]):
        """Keep every actuator's error, so the message names all of them."""
        self.errors = errors
        super().__init__("; ".join(f"{part}: {type(error).__name__}: {error}" for part, error in errors.items()))


class PicarHardware:
    """Steering servo on one PCA9685 channel plus a drive motor port."""

    def __init__(
        self,
        pca: Pca9685,
        steering_channel: int,
        motor: MotorPort,
        frequency_hz: float,
        *,
        simulation: Any = None,
    ):
        """Wrap configured devices; ``simulation`` keeps the simulated chip/GPIO for inspection in sim mode.

        ``frequency_hz`` is the PWM frequency the chip was configured to (its prescaler read back once at
        start, see ``Pca9685.configure``); the servo's pulse width is its ticks at that frequency. After a
        reset the chip is configured for it again: asking for a frequency the prescaler produces gives back
        that same prescaler.
        """
        self.pca = pca
        self.steering_channel = steering_channel
        self.motor = motor
        self.frequency_hz = frequency_hz
        self.simulation = simulation
        # Set by a readback whose MODE1 or MODE2 is not as configured (reset, brown-out, another program): the
        # next apply configures the chip again before it writes the channels.
        self.chip_fault: str | None = None
        self.reconfigurations = 0

    def _motor_on_chip(self) -> bool:
        """The B2 wiring: the motor bridge inputs are channels of the same PCA9685."""
        return getattr(self.motor, "pca", None) is self.pca

    def _reconfigure(self) -> None:
        """``Pca9685.configure`` again (prescaler while asleep, wake, 500 us, RESTART, auto-increment, all off)."""
        frequency = self.pca.configure(self.frequency_hz)
        if not math.isclose(frequency, self.frequency_hz, rel_tol=1e-9):
            raise Pca9685NotRunning(
                f"PCA9685 runs at {frequency:.2f} Hz after reconfiguring, not {self.frequency_hz:.2f} Hz"
            )
        self.chip_fault = None
        self.reconfigurations += 1

    def apply(self, output: PicarOutput) -> None:
        """Write the motor duty and the servo pulse; raises ``ActuatorError`` after trying both.

        A stop goes to the motor first and never depends on the steering write: on the PiCar-B the motor is
        on GPIO and the servo on I2C, so a dead I2C bus must not keep the motor running. A driving output
        steers first and drives only when the steering write succeeded; otherwise the motor is stopped,
        because a car whose steering is not where the command wants it must not move.

        After a readback found the chip reset (``chip_fault``), the chip is configured again before its
        channels are written: after the motor for a stop, before the steering for a driving output
        (configuring turns every channel off, the B2 motor included). If that fails, the steering is not
        written (error "pca9685") and a driving output stops the motor.
        """
        errors: dict[str, Exception] = {}
        drives = output.motor_duty != 0.0

        def steer() -> None:
            if self.chip_fault is not None:
                _attempt(errors, "pca9685", self._reconfigure)
            if "pca9685" not in errors:
                self.pca.set_pulse_ticks(self.steering_channel, output.servo_ticks)

        if drives:
            _attempt(errors, "servo", steer)
        duty = 0.0 if errors else output.motor_duty
        _attempt(errors, "motor", lambda: self.motor.drive(duty))
        if not drives:
            _attempt(errors, "servo", steer)
        if errors:
            raise ActuatorError(errors)

    def readback(self) -> Readback:
        """Read the actuators back (the servo from the chip registers, so a lost write shows up); never raises.

        The chip's MODE1 and MODE2 (one byte each; the prescaler is not read, it is set at start and after a reset
        only), then one read per actuator: the servo's channel registers and the motor; either may fail without
        losing the other. On a chip that does not run as configured (``Pca9685.check_running``: asleep after a
        reset or brown-out, MODE2 rewritten) the pins do not show the registers, so the servo, and the motor when
        it is on the chip, read as None with the cause; the next ``apply`` configures the chip again.
        """
        errors: dict[str, Exception] = {}
        chip = _attempt(errors, "servo", lambda: self.pca.check_running() or True)
        if isinstance(errors.get("servo"), Pca9685NotRunning):
            self.chip_fault = str(errors["servo"])
        ticks = _attempt(errors, "servo", lambda: self.pca.read_channel(self.steering_channel)) if chip else None
        if chip or not self._motor_on_chip():
            duty = _attempt(errors, "motor", self.motor.readback)
        else:
            duty, errors["motor"] = None, errors["servo"]
        pulse = ticks_to_us(ticks, self.frequency_hz) if ticks is not None else None
        return Readback(
            ticks, pulse, duty, [f"{part}: {type(error).__name__}: {error}" for part, error in errors.items()]
        )

    def close(self) -> None:
        """Release the motor (it coasts) and close the bus; the servo keeps holding its last pulse."""
        try:
            self.motor.close()
        finally:
            close = getattr(self.pca.bus, "close", None)
            if close:
                close()


def _attempt(errors: dict[str, Exception], part: str, action: Callable[[], Any]) -> Any:
    """``action()``, or None with its error recorded under ``part``.

    Any exception counts: smbus raises OSError, RPi.GPIO RuntimeError, lgpio its own ``lgpio.error``.
    """
    try:
        return action()
    except Exception as error:  # noqa: BLE001 - whatever the driver raises is an actuator fault
        errors[part] = error
        return None


@dataclass
class Simulation:
    """The simulated devices behind a ``hardware:=sim`` base."""

    chip: SimulatedPca9685
    gpio: SimulatedGpio | None


def open_hardware(settings: HardwareSettings) -> PicarHardware:
    """Build and initialise the actuators; real I2C/GPIO modules are imported only for ``hardware='picar_b'``."""
    simulation = None
    if settings.hardware == "sim":
        chip = SimulatedPca9685()
        bus: I2cBus = SimulatedI2cBus({settings.pca9685_address: chip})
        gpio = SimulatedGpio() if settings.motor_driver == "gpio" else None
        simulation = Simulation(chip, gpio)
    else:
        bus = open_smbus(settings.i2c_bus)
        gpio = import_rpi_gpio() if settings.motor_driver == "gpio" else None
    pca = Pca9685(bus, settings.pca9685_address)
    frequency_hz = pca.configure(settings.pwm_frequency_hz)
    if gpio is not None:
        motor: MotorPort = GpioMotor(
            settings.motor_enable_pin,
            settings.motor_forward_pin,
            settings.motor_reverse_pin,
            settings.motor_pwm_frequency_hz,
            gpio=gpio,
        )
    else:
        motor = Pca9685Motor(pca, settings.motor_forward_channel, settings.motor_reverse_channel)
    return PicarHardware(pca, settings.steering_channel, motor, frequency_hz, simulation=simulation)
