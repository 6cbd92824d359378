"""Drive-motor ports: one signed duty in, H-bridge pins out.

Two wirings exist on Adeept's PiCar-B family:

* PiCar-B (Adeept Motor HAT): an L298-style bridge driven from Raspberry Pi GPIO, an enable pin with
  software PWM (Adeept uses 1 kHz) and two direction pins (``GpioMotor``).
* PiCar-B2 / newer Adeept boards: the bridge inputs hang off PCA9685 channels, both driven with PWM like
  Adafruit's ``DCMotor`` in slow-decay mode (``Pca9685Motor``).

Both take ``drive(duty)`` with ``duty`` in [-1, 1] (positive = forward) and ``readback()`` reporting the
signed duty the pins are producing. ``SimulatedGpio`` stands in for the ``RPi.GPIO`` module (the API
``rpi-lgpio`` also provides on a Pi 5 / Ubuntu 24.04) and enforces its rules, so ``GpioMotor`` runs the same
code in tests as on the car; ``Pca9685Motor`` is simulated through :class:`SimulatedPca9685`.
"""

from __future__ import annotations

from typing import Any, Protocol

from ssd_ros.rover.pca9685 import TICKS_PER_PERIOD, Pca9685


class MotorPort(Protocol):
    """A DC drive motor behind an H-bridge."""

    def drive(self, duty: float) -> None:
        """Signed duty in [-1, 1]: magnitude is PWM duty, sign is direction (0 = coast)."""

    def readback(self) -> float:
        """Signed duty the outputs currently produce."""

    def close(self) -> None:
        """Stop the motor and release the pins."""


def _check_duty(duty: float) -> float:
    if not -1.0 <= duty <= 1.0:  # also rejects NaN
        raise ValueError(f"motor duty must be within [-1, 1], got {duty}")
    return float(duty)


class GpioMotor:
    """Motor on an enable pin (PWM) plus two direction pins, through the ``RPi.GPIO`` API (BCM numbering).

    ``forward_pin`` is driven high (and ``reverse_pin`` low) for positive duty. Zero duty drives all three
    pins low, which lets the motor coast, as Adeept's own ``motorStop`` does.
    """

    def __init__(
        self, enable_pin: int, forward_pin: int, reverse_pin: int, pwm_frequency_hz: float = 1000.0, *, gpio: Any
    ):
        """Claim the pins on ``gpio`` (the ``RPi.GPIO`` module, or a ``SimulatedGpio``) and stop the motor."""
        self.gpio = gpio
        self.pins = (enable_pin, forward_pin, reverse_pin)
        self.enable_pin, self.forward_pin, self.reverse_pin = self.pins
        gpio.setwarnings(False)
        gpio.setmode(gpio.BCM)
        for pin in self.pins:
            gpio.setup(pin, gpio.OUT, initial=gpio.LOW)
        self._pwm = gpio.PWM(enable_pin, pwm_frequency_hz)
        self._pwm.start(0)
        self._duty = 0.0

    def drive(self, duty: float) -> None:
        """Set the signed duty; the bridge is disabled while the direction pins change (no shoot-through)."""
        duty = _check_duty(duty)
        gpio = self.gpio
        self._pwm.ChangeDutyCycle(0)
        # The motor is stopped from here on: a pin write that fails below must not leave ``readback`` saying
        # it still runs at the old duty (a confirmed stop would read as "may still run").
        self._duty = 0.0
        gpio.output(self.forward_pin, gpio.HIGH if duty > 0 else gpio.LOW)
        gpio.output(self.reverse_pin, gpio.HIGH if duty < 0 else gpio.LOW)
        self._pwm.ChangeDutyCycle(abs(duty) * 100.0)
        self._duty = abs(duty)

    def readback(self) -> float:
        """Direction from the pin levels (RPi.GPIO can read outputs back) times the enable duty last set."""
        direction = int(self.gpio.input(self.forward_pin)) - int(self.gpio.input(self.reverse_pin))
        return direction * self._duty

    def close(self) -> None:
        """Coast, stop the PWM and release only this motor's pins; each step is tried even when one before fails.

        Stopping the PWM is a second way to take the enable pin low: a coast write that failed must not leave it
        running at the last duty.
        """
        try:
            self.drive(0.0)
        finally:
            try:
                self._pwm.stop()
            finally:
                self.gpio.cleanup(list(self.pins))


class Pca9685Motor:
    """Motor whose bridge inputs are two PCA9685 channels (Adeept PiCar-B2: M1 on channels 15 and 14).

    Slow decay, as Adeept's code configures ``adafruit_motor``: forward holds ``forward_channel`` fully on and
    PWMs ``reverse_channel`` with ``1 - duty`` (and the mirror image for reverse), so the average bridge
    voltage is proportional to ``duty``. Zero duty turns both channels fully off (coast).

    Both channels change in one I2C write when they are neighbours (the B2's motor M1: 15 and 14):
    written one after the other, the state in between (one channel new, the other old) drives the motor the
    wrong way or at full duty, for example reverse at 0.8 between forward 0.2 and a stop, and stays so when the
    second write fails. Channels that are not neighbours cannot be changed together and keep that risk.
    """

    def __init__(self, pca: Pca9685, forward_channel: int, reverse_channel: int):
        """Use two channels of an already configured ``Pca9685`` and stop the motor."""
        if forward_channel == reverse_channel:
            raise ValueError("motor forward and reverse channels must differ")
        self.pca = pca
        self.forward_channel = forward_channel
        self.reverse_channel = reverse_channel
        self.drive(0.0)

    def drive(self, duty: float) -> None:
        """Set the signed duty (quantised to the chip's 12-bit ticks)."""
        duty = _check_duty(duty)
        if duty == 0.0:
            self.pca.set_pulse_ticks_together({self.forward_channel: 0, self.reverse_channel: 0})
            return
        held, chopped = (
            (self.forward_channel, self.reverse_channel) if duty > 0 else (self.reverse_channel, self.forward_channel)
        )
        # One write for neighbouring channels (see the class docstring).
        self.pca.set_pulse_ticks_together(
            {chopped: TICKS_PER_PERIOD - round(abs(duty) * TICKS_PER_PERIOD), held: TICKS_PER_PERIOD}
        )

    def readback(self) -> float:
        """Signed duty from the two channels' registers: the difference of their high times."""
        forward = self.pca.read_channel(self.forward_channel)
        reverse = self.pca.read_channel(self.reverse_channel)
        return (forward - reverse) / TICKS_PER_PERIOD

    def close(self) -> None:
        """Coast."""
        self.drive(0.0)


class SoftPwm:
    """``RPi.GPIO.PWM`` as simulated: a software PWM (``start``/``ChangeDutyCycle``/``stop``)."""

    def __init__(self, frequency_hz: float):
        """Stopped PWM at ``frequency_hz``."""
        self.frequency_hz = frequency_hz
        self.duty_percent = 0.0
        self.running = False

    def _set(self, duty_percent: float) -> None:
        if not 0.0 <= duty_percent <= 100.0:
            raise ValueError("dutycycle must have a value from 0.0 to 100.0")
        self.duty_percent = float(duty_percent)

    def start(self, duty_percent: float) -> None:
        """Start at a duty cycle in percent."""
        self._set(duty_percent)
        self.running = True

    def ChangeDutyCycle(self, duty_percent: float) -> None:  # noqa: N802 - RPi.GPIO's name
        """Change the duty cycle in percent."""
        self._set(duty_percent)

    def stop(self) -> None:
        """Stop the PWM (pin low)."""
        self.running = False


class SimulatedGpio:
    """The subset of the ``RPi.GPIO`` module ``GpioMotor`` uses, with the same rules and errors.

    Pin modes must be chosen with ``setmode`` before ``setup``; ``output`` needs a pin set up as an output;
    ``PWM`` duty cycles must lie in 0..100; one PWM object per pin. Pin levels and PWM duty are observable
    through ``levels`` and ``pwm_duty``.
    """

    BCM = 11
    BOARD = 10
    OUT = 0
    IN = 1
    LOW = 0
    HIGH = 1

    def __init__(self):
        """All pins unconfigured."""
        self.mode: int | None = None
        self.levels: dict[int, int] = {}
        self.pwms: dict[int, SoftPwm] = {}

    def setwarnings(self, enabled: bool) -> None:
        """Accepted and ignored, like a quiet RPi.GPIO."""

    def setmode(self, mode: int) -> None:
        """Choose BCM or BOARD numbering (may not change once set)."""
        if self.mode is not None and self.mode != mode:
            raise ValueError("A different mode has already been set!")
        self.mode = mode

    def setup(self, pin: int, direction: int, initial: int = LOW) -> None:
        """Configure a pin as an output at level ``initial``."""
        if self.mode is None:
            raise RuntimeError("Please set pin numbering mode using GPIO.setmode(GPIO.BOARD) or GPIO.setmode(GPIO.BCM)")
        if direction != self.OUT:
            raise NotImplementedError("the simulator models outputs only")
        self.levels[pin] = initial

    def output(self, pin: int, level: int) -> None:
        """Drive an output pin."""
        if pin not in self.levels:
            raise RuntimeError("The GPIO channel has not been set up as an OUTPUT")
        self.levels[pin] = int(bool(level))

    def input(self, pin: int) -> int:
        """Read a pin's level (outputs read back their driven level)."""
        if pin not in self.levels:
            raise RuntimeError("You must setup() the GPIO channel first")
        return self.levels[pin]

    def cleanup(self, pins: list[int] | None = None) -> None:
        """Return pins (default all) to unconfigured inputs."""
        for pin in list(self.levels) if pins is None else pins:
            self.levels.pop(pin, None)
            self.pwms.pop(pin, None)

    def PWM(self, pin: int, frequency_hz: float) -> SoftPwm:  # noqa: N802 - RPi.GPIO's name
        """Software PWM on an output pin."""
        if pin not in self.levels:
            raise RuntimeError("You must setup() the GPIO channel as an output first")
        if pin in self.pwms:
            raise RuntimeError("A PWM object already exists for this GPIO channel")
        if not frequency_hz > 0:
            raise ValueError("frequency must be greater than 0.0")
        self.pwms[pin] = SoftPwm(frequency_hz)
        return self.pwms[pin]

    def pwm_duty(self, pin: int) -> float:
        """Duty (0..1) the pin's PWM is producing; 0 when stopped or absent."""
        pwm = self.pwms.get(pin)
        return pwm.duty_percent / 100.0 if pwm and pwm.running else 0.0


def simulated_motor_duty(gpio: SimulatedGpio, motor: GpioMotor) -> float:
    """The signed duty a simulated GPIO motor's pins produce (what a scope across the motor would show)."""
    direction = gpio.levels.get(motor.forward_pin, 0) - gpio.levels.get(motor.reverse_pin, 0)
    return direction * gpio.pwm_duty(motor.enable_pin)


def import_rpi_gpio() -> Any:
    """The real ``RPi.GPIO`` module (apt python3-rpi.gpio / python3-rpi-lgpio), imported only on the robot."""
    try:
        import RPi.GPIO as GPIO  # noqa: N814 - the module's customary name
    except ImportError as error:
        raise RuntimeError(
            "the GPIO motor driver needs RPi.GPIO (apt install python3-rpi-lgpio or python3-rpi.gpio)"
        ) from error
    return GPIO
