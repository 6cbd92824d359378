"""Base driver core: calibration mapping, command handling, watchdog, and the hardware assembly in sim."""

import math

import pytest

from ssd_ros.control.ackermann import steering_angle
from ssd_ros.rover.motor import simulated_motor_duty
from ssd_ros.rover.pca9685 import (
    CONFIGURED_MODE2,
    MODE2,
    MODE2_INVRT,
    MODE2_OCH,
    MODE2_OUTDRV,
    PRE_SCALE,
    output_frequency_hz,
    prescale_for,
)
from ssd_ros.rover.picar_base import (
    ActuatorError,
    DriveCalibration,
    HardwareSettings,
    PicarConfig,
    PicarController,
    SteeringCalibration,
    open_hardware,
)

MAX = math.radians(30)
WHEELBASE = 0.14


def steering(**overrides):
    values = {"centre_ticks": 300, "left_ticks": 450, "right_ticks": 150, "max_steering_rad": MAX}
    values.update(overrides)
    return SteeringCalibration(**values)


def controller(timeout=0.5, **drive):
    drive_values = {"speed_at_full_duty_mps": 0.5}
    drive_values.update(drive)
    return PicarController(PicarConfig(WHEELBASE, steering(), DriveCalibration(**drive_values), timeout))


def test_steering_ticks_at_calibration_points():
    cal = steering()
    assert cal.ticks_for(0.0) == 300
    assert cal.ticks_for(MAX) == 450 and cal.ticks_for(-MAX) == 150
    assert cal.ticks_for(MAX / 2) == 375 and cal.ticks_for(-MAX / 2) == 225
    assert cal.ticks_for(10.0) == 450 and cal.ticks_for(-10.0) == 150, "beyond the limit is clamped"


def test_asymmetric_and_reversed_servo_calibration():
    # Servo horn the other way round (left = fewer ticks), and less travel to the right.
    cal = steering(centre_ticks=370, left_ticks=280, right_ticks=500)
    assert cal.ticks_for(MAX) == 280 and cal.ticks_for(-MAX) == 500
    assert cal.ticks_for(MAX / 2) == 325 and cal.ticks_for(-MAX / 2) == 435
    assert cal.ticks_for(10.0) == 280 and cal.ticks_for(-10.0) == 500, "clamped to the reversed limits"


@pytest.mark.parametrize(
    "bad",
    [
        {"centre_ticks": 100},  # outside left/right
        {"left_ticks": 0},
        {"right_ticks": 4096},
        {"max_steering_rad": 0.0},
        {"max_steering_rad": math.radians(95)},
        {"trim_rad": MAX},
    ],
)
def test_impossible_steering_calibration_rejected(bad):
    with pytest.raises(ValueError):
        steering(**bad)


def test_drive_calibration_duty():
    drive = DriveCalibration(speed_at_full_duty_mps=0.5)
    assert drive.duty_for(0.25) == (0.5, False)
    assert drive.duty_for(-0.25) == (-0.5, False)
    assert drive.duty_for(0.0) == (0.0, False)
    assert drive.duty_for(2.0) == (1.0, True)
    capped = DriveCalibration(speed_at_full_duty_mps=0.5, max_duty=0.6, min_duty=0.2, inverted=True)
    assert capped.duty_for(0.5) == (-0.6, True)
    duty, clamped = capped.duty_for(-0.15)  # 0.3 of full speed = half of the 0.6 cap -> midway 0.2..0.6
    assert duty == pytest.approx(0.4) and not clamped
    assert capped.duty_for(1e-6)[0] == pytest.approx(-0.2, abs=1e-4), "small commands start at min_duty"
    for bad in ({"speed_at_full_duty_mps": 0}, {"speed_at_full_duty_mps": 1, "max_duty": 1.2}):
        with pytest.raises(ValueError):
            DriveCalibration(**bad)


def test_startup_output_is_stop_and_centre():
    base = controller()
    assert base.last_output.servo_ticks == 300 and base.last_output.motor_duty == 0.0
    assert base.last_output.reason == "startup"


def test_command_maps_through_ackermann():
    base = controller()
    # A yaw rate needing exactly half the max steering angle at 0.25 m/s.
    angular = 0.25 * math.tan(MAX / 2) / WHEELBASE
    out = base.command(0.25, angular, now_s=1.0)
    assert out.steering_angle_rad == pytest.approx(steering_angle(0.25, angular, WHEELBASE, MAX))
    assert out.servo_ticks == 375 and out.motor_duty == pytest.approx(0.5)
    right = base.command(0.25, -angular, now_s=1.1)
    assert right.servo_ticks == 225
    reverse_left_yaw = base.command(-0.25, angular, now_s=1.2)  # reversing flips the wheel angle
    assert reverse_left_yaw.servo_ticks == 225 and reverse_left_yaw.motor_duty == pytest.approx(-0.5)
    assert base.counters.applied == 3 and base.counters.yaw_rate_limited == 0


def test_turn_tighter_than_possible_is_limited_and_counted():
    base = controller()
    out = base.command(0.2, 10.0, now_s=0.0)
    assert out.servo_ticks == 450 and out.steering_angle_rad == pytest.approx(MAX)
    assert base.counters.yaw_rate_limited == 1
    spin = base.command(0.0, 1.0, now_s=0.1)  # a car cannot turn in place: wheels straight, stopped
    assert spin.servo_ticks == 300 and spin.motor_duty == 0.0
    assert base.counters.yaw_rate_limited == 2


def test_trim_shifts_straight_ahead():
    trim = math.radians(3)
    base = PicarController(PicarConfig(WHEELBASE, steering(trim_rad=trim), DriveCalibration(0.5)))
    straight = base.command(0.3, 0.0, now_s=0.0)
    assert straight.servo_ticks == round(300 + 150 * trim / MAX) == 315
    assert base.safe_output("watchdog").servo_ticks == 315
    assert base.command(0.3, 50.0, now_s=0.1).servo_ticks == 450, "trim never exceeds the limit"


@pytest.mark.parametrize(
    ("linear", "angular"),
    [(math.nan, 0.0), (0.1, math.nan), (math.inf, 0.0), (0.1, -math.inf)],
)
def test_non_finite_commands_are_rejected(linear, angular):
    base = controller()
    good = base.command(0.25, 0.0, now_s=0.0)
    assert base.command(linear, angular, now_s=0.1) is None
    assert base.last_output == good, "a rejected command changes nothing"
    assert base.counters.rejected_nonfinite == 1 and base.counters.received == 2
    # ... and does not keep the watchdog happy
    assert base.check_watchdog(0.6).reason == "watchdog"


@pytest.mark.parametrize(("linear", "angular"), [(1e30, 0.0), (-1e300, 1e300), (1e-300, 1e300), (5.0, -1e9)])
def test_huge_commands_are_clamped(linear, angular):
    base = controller()
    out = base.command(linear, angular, now_s=0.0)
    assert math.isfinite(out.steering_angle_rad) and -1.0 <= out.motor_duty <= 1.0
    assert 150 <= out.servo_ticks <= 450
    assert abs(out.motor_duty) == 1.0 or linear == 1e-300
    assert base.counters.speed_clamped + base.counters.yaw_rate_limited >= 1


def test_watchdog_stops_once_after_timeout():
    base = controller(timeout=0.5)
    assert base.check_watchdog(100.0) is None, "no command yet: already stopped, nothing to do"
    base.command(0.4, 0.5, now_s=10.0)
    assert base.check_watchdog(10.5) is None
    stop = base.check_watchdog(10.51)
    assert stop.reason == "watchdog" and stop.motor_duty == 0.0 and stop.servo_ticks == 300
    assert base.check_watchdog(11.0) is None and base.counters.watchdog_stops == 1
    base.command(0.4, 0.0, now_s=12.0)
    assert base.check_watchdog(12.6).reason == "watchdog" and base.counters.watchdog_stops == 2


def test_hardware_settings_validation():
    with pytest.raises(ValueError):
        HardwareSettings(hardware="turbo")
    with pytest.raises(ValueError):
        HardwareSettings(motor_driver="pca9685", steering_channel=15)
    with pytest.raises(ValueError, match="three different pins"):
        HardwareSettings(motor_driver="gpio", motor_forward_pin=14)
    HardwareSettings(motor_driver="pca9685", motor_forward_pin=14)  # the pins mean nothing on the B2


@pytest.mark.parametrize("motor_driver", ["gpio", "pca9685"])
def test_sim_hardware_applies_and_reads_back(motor_driver):
    hardware = open_hardware(HardwareSettings(hardware="sim", motor_driver=motor_driver))
    chip = hardware.simulation.chip
    assert chip.output_frequency_hz() == pytest.approx(output_frequency_hz(prescale_for(50.0)))
    base = controller()
    hardware.apply(base.last_output)
    assert chip.high_ticks(2) == 300
    out = base.command(0.25, 0.25 * math.tan(MAX) / WHEELBASE, now_s=0.0)
    hardware.apply(out)
    assert chip.high_ticks(2) == 450
    readback = hardware.readback()
    assert readback.servo_ticks == 450
    assert readback.servo_pulse_us == pytest.approx(450 * 1e6 / (chip.output_frequency_hz() * 4096))
    assert readback.motor_duty == pytest.approx(0.5, abs=1 / 4096)
    if motor_driver == "gpio":
        assert simulated_motor_duty(hardware.simulation.gpio, hardware.motor) == pytest.approx(0.5)
    else:
        assert chip.duty(15) == 1.0 and chip.duty(14) == pytest.approx(0.5)
    hardware.apply(base.safe_output("shutdown"))
    hardware.close()
    assert chip.high_ticks(2) == 300, "the servo holds centre after shutdown"
    if motor_driver == "pca9685":
        assert chip.duty(15) == chip.duty(14) == 0.0
    else:
        assert hardware.simulation.gpio.levels == {}, "GPIO pins released"
    assert chip.ignored_writes == []


def test_stop_reaches_the_gpio_motor_while_the_i2c_bus_is_dead():
    """PiCar-B: motor on GPIO, servo on I2C. A dead bus must not keep the motor running."""
    hardware = open_hardware(HardwareSettings(hardware="sim", motor_driver="gpio"))
    gpio, bus = hardware.simulation.gpio, hardware.pca.bus
    base = controller()
    drive = base.command(0.25, 0.25 * math.tan(MAX) / WHEELBASE, now_s=0.0)
    hardware.apply(drive)
    assert simulated_motor_duty(gpio, hardware.motor) == pytest.approx(0.5)
    chip = bus.devices.pop(0x40)  # the PCA9685 stops acknowledging

    with pytest.raises(ActuatorError) as failure:
        hardware.apply(base.safe_output("watchdog"))
    assert set(failure.value.errors) == {"servo"} and "Remote I/O error" in str(failure.value)
    assert simulated_motor_duty(gpio, hardware.motor) == 0.0, "the motor stopped although the servo write failed"
    readback = hardware.readback()
    assert readback.motor_duty == 0.0 and readback.servo_ticks is None and readback.servo_pulse_us is None
    assert len(readback.errors) == 1 and readback.errors[0].startswith("servo: OSError")
    assert not readback.shows(base.safe_output("watchdog")), "an unreadable servo is not a confirmed output"
    assert chip.high_ticks(2) == 450, "the servo kept its last pulse"


@pytest.mark.parametrize("motor_driver", ["gpio", "pca9685"])
def test_driving_output_never_drives_when_the_steering_write_fails(motor_driver):
    hardware = open_hardware(HardwareSettings(hardware="sim", motor_driver=motor_driver))
    chip, bus = hardware.simulation.chip, hardware.pca.bus
    base = controller()
    bus.devices.clear()
    with pytest.raises(ActuatorError) as failure:
        hardware.apply(base.command(0.25, 0.0, now_s=0.0))
    # The motor was told to stop (on the B2 that write fails too, and the chip still holds the startup stop).
    assert set(failure.value.errors) == ({"servo"} if motor_driver == "gpio" else {"servo", "motor"})
    if motor_driver == "gpio":
        assert simulated_motor_duty(hardware.simulation.gpio, hardware.motor) == 0.0
    else:
        assert chip.duty(15) == chip.duty(14) == 0.0


def test_readback_confirms_exact_outputs_only():
    hardware = open_hardware(HardwareSettings(hardware="sim", motor_driver="pca9685"))
    base = controller()
    drive = base.command(0.3, 0.0, now_s=0.0)
    hardware.apply(drive)
    assert hardware.readback().shows(drive), "B2 duty quantised to 1/4096 still counts as shown"
    assert not hardware.readback().shows(base.safe_output("watchdog")), "a running motor is not a stop"
    hardware.apply(base.safe_output("watchdog"))
    assert hardware.readback().shows(base.safe_output("watchdog"))


def test_readback_keeps_what_it_read_when_another_read_fails(monkeypatch):
    """The PWM frequency is read back once, by configure; a readback reads MODE1, the servo channel and the motor."""
    hardware = open_hardware(HardwareSettings(hardware="sim", motor_driver="gpio"))
    chip, bus = hardware.simulation.chip, hardware.pca.bus
    assert hardware.frequency_hz == pytest.approx(chip.output_frequency_hz())
    base = controller()
    hardware.apply(base.last_output)

    read_byte = bus.read_byte_data

    def no_prescaler_reads(address, register):  # the prescaler is set at start: a readback does not read it
        if register == PRE_SCALE:
            raise OSError(121, "Remote I/O error")
        return read_byte(address, register)

    monkeypatch.setattr(bus, "read_byte_data", no_prescaler_reads)
    readback = hardware.readback()
    assert readback.servo_ticks == 300 and readback.motor_duty == 0.0 and readback.errors == []
    assert readback.servo_pulse_us == pytest.approx(300 * 1e6 / (chip.output_frequency_hz() * 4096))

    def broken_motor():
        raise RuntimeError("GPIO gone")

    monkeypatch.setattr(hardware.motor, "readback", broken_motor)
    readback = hardware.readback()
    assert readback.servo_ticks == 300 and readback.servo_pulse_us is not None, "the servo reading is kept"
    assert readback.motor_duty is None and readback.errors == ["motor: RuntimeError: GPIO gone"]
    assert not readback.shows(base.last_output)


def record_writes(monkeypatch, hardware):
    """Log the order of chip configuration, steering writes and motor writes in ``apply``."""
    calls = []
    configure, steer, drive = hardware.pca.configure, hardware.pca.set_pulse_ticks, hardware.motor.drive

    def logged_configure(frequency):
        calls.append("configure")
        return configure(frequency)

    def logged_steer(channel, ticks):
        if channel == hardware.steering_channel:
            calls.append(f"servo {ticks}")
        return steer(channel, ticks)

    def logged_drive(duty):
        calls.append(f"motor {duty}")
        return drive(duty)

    monkeypatch.setattr(hardware.pca, "configure", logged_configure)
    monkeypatch.setattr(hardware.pca, "set_pulse_ticks", logged_steer)
    monkeypatch.setattr(hardware.motor, "drive", logged_drive)
    return calls


@pytest.mark.parametrize("motor_driver", ["gpio", "pca9685"])
@pytest.mark.parametrize("next_output", ["drive", "stop"])
def test_chip_reset_while_driving_is_not_confirmed_and_the_next_apply_recovers(monkeypatch, motor_driver, next_output):
    """A brown-out resets the PCA9685 (asleep, 200 Hz, outputs off): no confirmation until it is configured again."""
    hardware = open_hardware(HardwareSettings(hardware="sim", motor_driver=motor_driver, pwm_frequency_hz=50.0))
    chip = hardware.simulation.chip
    base = controller()
    drive = base.command(0.25, 0.25 * math.tan(MAX) / WHEELBASE, now_s=0.0)
    hardware.apply(drive)
    assert hardware.readback().shows(drive)

    chip.power_on_reset()
    assert chip.read(PRE_SCALE) == 0x1E and chip.high_ticks(2) == 0
    readback = hardware.readback()
    assert not readback.shows(drive)
    assert readback.servo_ticks is None and readback.servo_pulse_us is None
    assert readback.errors[0].startswith("servo: Pca9685NotRunning: PCA9685 asleep (reset or brown-out?): outputs off")
    if motor_driver == "pca9685":  # the bridge inputs are on the sleeping chip: their registers say nothing
        assert readback.motor_duty is None and readback.errors[1].startswith("motor: Pca9685NotRunning: PCA9685 asleep")
    else:  # the GPIO motor still reads what it does
        assert readback.motor_duty == pytest.approx(0.5) and len(readback.errors) == 1
    assert hardware.chip_fault is not None

    calls = record_writes(monkeypatch, hardware)
    wanted = drive if next_output == "drive" else base.safe_output("watchdog")
    hardware.apply(wanted)
    if next_output == "drive":  # configure (every channel off) before steering, steering before driving
        assert calls == ["configure", f"servo {drive.servo_ticks}", f"motor {drive.motor_duty}"]
    else:  # the motor is stopped first, then the chip configured, then the servo centred
        assert calls == ["motor 0.0", "configure", "servo 300"]
    assert chip.read(PRE_SCALE) == prescale_for(50.0) == 121, "the configured frequency, not the power-on 200 Hz"
    assert chip.output_frequency_hz() == pytest.approx(hardware.frequency_hz)
    assert not chip.sleeping and not chip.restart_pending and chip.ignored_writes == []
    readback = hardware.readback()
    assert readback.shows(wanted) and readback.errors == []
    assert chip.high_ticks(2) == wanted.servo_ticks
    assert readback.servo_pulse_us == pytest.approx(chip.pulse_width_us(2))
    assert hardware.chip_fault is None and hardware.reconfigurations == 1
    calls.clear()
    hardware.apply(wanted)
    assert "configure" not in calls, "configured once per reset, not on every write"


@pytest.mark.parametrize("motor_driver", ["gpio", "pca9685"])
@pytest.mark.parametrize(
    ("mode2", "bit"),
    [(MODE2_OUTDRV | MODE2_INVRT, "INVRT set"), (0x00, "OUTDRV clear"), (MODE2_OUTDRV | MODE2_OCH, "OCH set")],
)
def test_mode2_rewritten_while_driving_is_not_confirmed_and_the_next_apply_recovers(
    monkeypatch, motor_driver, mode2, bit
):
    """Another program rewrites MODE2: reported like a reset (naming MODE2 and the bit), repaired by the next apply.

    The readback read MODE1 only and confirmed the drive while, with INVRT, the servo pin held full lock.
    """
    hardware = open_hardware(HardwareSettings(hardware="sim", motor_driver=motor_driver))
    chip = hardware.simulation.chip
    base = controller()
    drive = base.command(0.25, 0.0, now_s=0.0)
    hardware.apply(drive)
    assert hardware.readback().shows(drive)

    hardware.pca.bus.write_byte_data(hardware.pca.address, MODE2, mode2)
    readback = hardware.readback()
    assert not readback.shows(drive) and readback.servo_ticks is None
    assert (
        readback.errors[0].startswith("servo: Pca9685NotRunning: PCA9685 MODE2 rewritten") and bit in readback.errors[0]
    )
    if motor_driver == "pca9685":  # the bridge inputs are on that chip's pins too
        assert readback.motor_duty is None and "MODE2" in readback.errors[1]
    else:
        assert readback.motor_duty == pytest.approx(0.5) and len(readback.errors) == 1
    assert hardware.chip_fault is not None

    calls = record_writes(monkeypatch, hardware)
    hardware.apply(drive)
    assert calls == ["configure", f"servo {drive.servo_ticks}", f"motor {drive.motor_duty}"]
    assert chip.read(MODE2) == CONFIGURED_MODE2 and chip.high_ticks(2) == drive.servo_ticks == 300
    assert hardware.readback().shows(drive) and hardware.chip_fault is None and hardware.reconfigurations == 1


def test_failed_reconfiguration_writes_no_steering_and_stops_the_gpio_motor():
    hardware = open_hardware(HardwareSettings(hardware="sim", motor_driver="gpio"))
    chip, bus, gpio = hardware.simulation.chip, hardware.pca.bus, hardware.simulation.gpio
    base = controller()
    drive = base.command(0.25, 0.0, now_s=0.0)
    hardware.apply(drive)
    chip.power_on_reset()
    assert not hardware.readback().shows(drive)
    bus.devices.clear()  # and then the chip does not answer at all
    with pytest.raises(ActuatorError) as failure:
        hardware.apply(drive)
    assert set(failure.value.errors) == {"pca9685"} and "Remote I/O error" in str(failure.value)
    assert simulated_motor_duty(gpio, hardware.motor) == 0.0, "no driving with the steering not configured"
    assert hardware.chip_fault is not None, "still to be configured once the chip answers"
    bus.devices[0x40] = chip
    hardware.apply(drive)
    assert hardware.readback().shows(drive) and chip.read(PRE_SCALE) == 121
