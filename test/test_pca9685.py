"""PCA9685 driver against the register-level simulated chip, and the chip model against the data sheet."""

import pytest

from ssd_ros.rover import pca9685 as p
from ssd_ros.rover.motor import GpioMotor, Pca9685Motor, SimulatedGpio, simulated_motor_duty


class FakeClock:
    """Manual time so the 500 us oscillator rule can be tested deterministically."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def us_to_ticks(pulse_us: float, frequency_hz: float) -> int:
    """Nearest whole tick count for a pulse width in microseconds (the inverse of ``ticks_to_us``)."""
    return round(pulse_us * frequency_hz * p.TICKS_PER_PERIOD / 1e6)


@pytest.fixture
def rig():
    clock = FakeClock()
    chip = p.SimulatedPca9685(clock=clock)
    bus = p.SimulatedI2cBus({0x40: chip})
    driver = p.Pca9685(bus, 0x40, sleep=clock.sleep)
    return clock, chip, bus, driver


@pytest.mark.parametrize(
    ("frequency", "prescale"),
    [(50.0, 121), (60.0, 101), (200.0, 30), (1526.0, 3), (24.0, 253)],
)
def test_prescale_formula_matches_data_sheet(frequency, prescale):
    # round(25 MHz / (4096 * f)) - 1; 200 Hz is the power-on value 0x1E, 1526 Hz the fastest (prescale 3).
    assert p.prescale_for(frequency) == prescale
    # The integer prescaler quantises the frequency (200 Hz really is 196.9 Hz).
    assert abs(p.output_frequency_hz(prescale) - frequency) / frequency < 0.02


def test_prescale_is_limited_to_chip_range():
    assert p.prescale_for(10_000.0) == p.PRESCALE_MIN
    assert p.prescale_for(1.0) == p.PRESCALE_MAX
    with pytest.raises(ValueError):
        p.prescale_for(0.0)


def test_tick_microsecond_conversions_round_trip():
    frequency = p.output_frequency_hz(121)  # what "50 Hz" really is: 50.03 Hz
    assert p.ticks_to_us(4096, frequency) == pytest.approx(1e6 / frequency)
    assert p.ticks_to_us(300, frequency) == pytest.approx(1463.9, abs=0.1)
    for ticks in (1, 150, 300, 450, 4095):
        assert us_to_ticks(p.ticks_to_us(ticks, frequency), frequency) == ticks


def test_power_on_state_is_asleep_with_outputs_off(rig):
    _, chip, _, _ = rig
    assert chip.sleeping
    assert chip.read(p.MODE1) == 0x11 and chip.read(p.MODE2) == 0x04 and chip.read(p.PRE_SCALE) == 0x1E
    assert chip.output_frequency_hz() == 0.0
    assert all(chip.high_ticks(channel) == 0 for channel in range(16))


def test_configure_sets_actual_frequency_and_leaves_chip_running(rig):
    _, chip, _, driver = rig
    actual = driver.configure(50.0)
    assert chip.read(p.PRE_SCALE) == 121
    assert actual == pytest.approx(25e6 / (4096 * 122))
    assert chip.output_frequency_hz() == pytest.approx(actual)
    assert not chip.sleeping and not chip.restart_pending
    assert chip.read(p.MODE1) & p.MODE1_AI
    assert chip.read(p.MODE2) == p.MODE2_OUTDRV
    assert chip.ignored_writes == []


def test_servo_pulse_on_a_channel(rig):
    _, chip, _, driver = rig
    frequency = driver.configure(50.0)
    driver.set_pulse_ticks(2, 300)
    assert chip.high_ticks(2) == 300
    assert chip.pulse_width_us(2) == pytest.approx(300 * 1e6 / (frequency * 4096))
    assert driver.read_channel(2) == 300
    # LED2 registers are at 0x06 + 4 * 2 = 0x0E..0x11: ON = 0, OFF = 300 = 0x012C
    assert [chip.read(r) for r in range(0x0E, 0x12)] == [0x00, 0x00, 0x2C, 0x01]
    assert all(chip.high_ticks(channel) == 0 for channel in range(16) if channel != 2)


def test_pulse_width_in_us_needs_the_actual_frequency(rig):
    _, chip, _, driver = rig
    driver.configure(50.0)
    ticks = us_to_ticks(1500.0, driver.frequency_hz())  # 50.03 Hz, not the 50 asked for
    driver.set_pulse_ticks(0, ticks)
    assert ticks == round(1500.0 * chip.output_frequency_hz() * 4096 / 1e6) == 307
    assert chip.pulse_width_us(0) == pytest.approx(1500.0, abs=p.ticks_to_us(0.5, chip.output_frequency_hz()))


def test_full_on_full_off_and_priority(rig):
    _, chip, bus, driver = rig
    driver.configure(1000.0)
    driver.set_pulse_ticks(5, 4096)
    assert chip.high_ticks(5) == 4096 and chip.duty(5) == 1.0
    driver.set_pulse_ticks(5, 0)
    assert chip.high_ticks(5) == 0
    bus.write_i2c_block_data(0x40, p.LED0_ON_L + 4 * 5, [0, p.LED_FULL, 0, p.LED_FULL])
    assert chip.high_ticks(5) == 0, "full off has priority over full on"
    driver.set_pwm(5, 4000, 100)  # wraps around the period end
    assert chip.high_ticks(5) == 196


def test_all_off_reaches_every_channel(rig):
    _, chip, _, driver = rig
    driver.configure(50.0)
    for channel in range(16):
        driver.set_pulse_ticks(channel, 100 + channel)
    driver.all_off()
    assert all(chip.high_ticks(channel) == 0 for channel in range(16))
    assert chip.read(p.ALL_LED_OFF_L + 1) == 0, "ALL_LED registers are write-only"


def test_invalid_arguments_raise(rig):
    _, _, _, driver = rig
    driver.configure(50.0)
    for bad in (-1, 16):
        with pytest.raises(ValueError):
            driver.set_pulse_ticks(bad, 100)
    with pytest.raises(ValueError):
        driver.set_pulse_ticks(0, 4097)
    with pytest.raises(ValueError):
        driver.set_duty(0, 1.5)
    with pytest.raises(ValueError):
        driver.set_pwm(0, 4096, 0)


def test_prescale_write_while_awake_is_ignored_like_the_chip(rig):
    _, chip, bus, driver = rig
    driver.configure(50.0)
    bus.write_byte_data(0x40, p.PRE_SCALE, 30)
    assert chip.read(p.PRE_SCALE) == 121
    assert chip.ignored_writes == ["PRE_SCALE written while awake (SLEEP=0)"]


def test_prescale_below_three_reads_three():
    chip = p.SimulatedPca9685()
    chip.write(p.PRE_SCALE, 0)  # power-on: asleep, so the write is accepted
    assert chip.read(p.PRE_SCALE) == 3


def test_block_access_without_auto_increment_hits_one_register():
    chip = p.SimulatedPca9685()
    bus = p.SimulatedI2cBus({0x40: chip})
    bus.write_i2c_block_data(0x40, p.LED0_ON_L, [1, 2, 3, 4])  # MODE1.AI is 0 at power-on
    assert chip.read(p.LED0_ON_L) == 4 and chip.read(p.LED0_ON_L + 1) == 0


def test_sleep_with_active_outputs_needs_restart(rig):
    clock, chip, bus, driver = rig
    driver.configure(50.0)
    driver.set_pulse_ticks(2, 300)
    mode = chip.read(p.MODE1)
    bus.write_byte_data(0x40, p.MODE1, mode | p.MODE1_SLEEP)
    assert chip.restart_pending and chip.high_ticks(2) == 0
    bus.write_byte_data(0x40, p.MODE1, mode)  # awake again, but the channels stay stopped
    assert chip.restart_pending and chip.high_ticks(2) == 0
    bus.write_byte_data(0x40, p.MODE1, mode | p.MODE1_RESTART)  # too early: oscillator not settled
    assert chip.restart_pending
    assert chip.ignored_writes[-1].startswith("RESTART written before the oscillator settled")
    clock.sleep(600e-6)
    bus.write_byte_data(0x40, p.MODE1, mode | p.MODE1_RESTART)
    assert not chip.restart_pending and chip.high_ticks(2) == 300, "registers were held through sleep"


def test_changing_frequency_on_a_running_chip_restarts_channels(rig):
    _, chip, _, driver = rig
    driver.configure(50.0)
    driver.set_pulse_ticks(2, 300)
    assert driver.set_frequency(60.0) == pytest.approx(p.output_frequency_hz(101))
    assert not chip.restart_pending and not chip.sleeping
    assert chip.high_ticks(2) == 300
    assert chip.output_frequency_hz() == pytest.approx(p.output_frequency_hz(101))
    assert chip.ignored_writes == []


def test_reconfigure_after_previous_run_starts_from_all_off(rig):
    _, chip, _, driver = rig
    driver.configure(50.0)
    driver.set_pulse_ticks(2, 300)
    driver.set_pulse_ticks(15, 4096)
    again = p.Pca9685(driver.bus, 0x40, sleep=driver._sleep)
    again.configure(50.0)
    assert all(chip.high_ticks(channel) == 0 for channel in range(16))
    assert not chip.restart_pending and chip.ignored_writes == []


def test_invert_bit_inverts_outputs(rig):
    _, chip, bus, driver = rig
    driver.configure(50.0)
    driver.set_pulse_ticks(1, 1000)
    bus.write_byte_data(0x40, p.MODE2, p.MODE2_OUTDRV | p.MODE2_INVRT)
    assert chip.high_ticks(1) == 4096 - 1000


def test_missing_device_is_an_oserror():
    bus = p.SimulatedI2cBus({})
    with pytest.raises(OSError):
        p.Pca9685(bus, 0x40).configure(50.0)


def test_pca9685_motor_slow_decay(rig):
    _, chip, _, driver = rig
    driver.configure(50.0)
    motor = Pca9685Motor(driver, forward_channel=15, reverse_channel=14)
    assert chip.duty(15) == 0 and chip.duty(14) == 0
    motor.drive(0.25)
    assert chip.duty(15) == 1.0 and chip.duty(14) == pytest.approx(0.75)
    assert motor.readback() == pytest.approx(0.25)
    motor.drive(-0.5)
    assert chip.duty(14) == 1.0 and chip.duty(15) == pytest.approx(0.5)
    assert motor.readback() == pytest.approx(-0.5)
    motor.close()
    assert chip.duty(15) == 0 and chip.duty(14) == 0 and motor.readback() == 0
    with pytest.raises(ValueError):
        motor.drive(float("nan"))


def test_gpio_motor_on_simulated_rpi_gpio():
    gpio = SimulatedGpio()
    motor = GpioMotor(4, 15, 14, 1000.0, gpio=gpio)
    assert gpio.levels == {4: 0, 15: 0, 14: 0} and gpio.pwms[4].frequency_hz == 1000.0
    motor.drive(0.6)
    assert (gpio.levels[15], gpio.levels[14]) == (1, 0)
    assert simulated_motor_duty(gpio, motor) == pytest.approx(0.6) == motor.readback()
    motor.drive(-0.3)
    assert (gpio.levels[15], gpio.levels[14]) == (0, 1)
    assert simulated_motor_duty(gpio, motor) == pytest.approx(-0.3) == motor.readback()
    motor.drive(0.0)
    assert simulated_motor_duty(gpio, motor) == 0.0 and gpio.levels[15] == gpio.levels[14] == 0
    with pytest.raises(ValueError):
        motor.drive(1.5)
    motor.close()
    assert gpio.levels == {} and gpio.pwms == {}


def test_simulated_gpio_enforces_rpi_gpio_rules():
    gpio = SimulatedGpio()
    with pytest.raises(RuntimeError):
        gpio.setup(4, gpio.OUT)
    gpio.setmode(gpio.BCM)
    with pytest.raises(RuntimeError):
        gpio.output(4, 1)
    gpio.setup(4, gpio.OUT)
    pwm = gpio.PWM(4, 1000)
    with pytest.raises(RuntimeError):
        gpio.PWM(4, 1000)
    with pytest.raises(ValueError):
        pwm.start(101)
    with pytest.raises(ValueError):
        gpio.setmode(gpio.BOARD)


def test_power_on_reset_restores_the_data_sheet_power_on_state(rig):
    """A brown-out: asleep (MODE1 0x11), MODE2 0x04, PRE_SCALE 0x1E, every channel full off, no output at all."""
    clock, chip, bus, driver = rig
    driver.configure(50.0)
    driver.set_pulse_ticks(2, 300)
    driver.set_pulse_ticks(15, 4096)
    driver.check_running()  # configured: awake, RESTART clear, auto-increment on
    chip.power_on_reset()
    assert chip.read(p.MODE1) == 0x11 and chip.read(p.MODE2) == 0x04 and chip.read(p.PRE_SCALE) == 0x1E
    assert [chip.read(register) for register in range(0x02, 0x06)] == [0xE2, 0xE4, 0xE8, 0xE0]
    for channel in range(16):
        base = p.LED0_ON_L + 4 * channel
        assert [chip.read(base + offset) for offset in range(4)] == [0, 0, 0, p.LED_FULL]
        assert chip.high_ticks(channel) == 0
    assert chip.sleeping and chip.output_frequency_hz() == 0.0 and chip.pulse_width_us(2) == 0.0
    with pytest.raises(p.Pca9685NotRunning, match=r"asleep \(reset or brown-out\?\): outputs off \(MODE1 0x11\)"):
        driver.check_running()

    # configure() brings it back at the configured frequency, with the channels writable again.
    assert driver.configure(50.0) == pytest.approx(p.output_frequency_hz(121))
    assert chip.read(p.PRE_SCALE) == 121 and not chip.sleeping and not chip.restart_pending
    driver.check_running()
    driver.set_pulse_ticks(2, 300)
    assert chip.high_ticks(2) == 300 and chip.output_frequency_hz() == pytest.approx(p.output_frequency_hz(121))
    assert chip.ignored_writes == []


def test_check_running_names_each_mode1_fault(rig):
    clock, chip, bus, driver = rig
    driver.configure(50.0)
    driver.set_pulse_ticks(2, 300)
    mode = chip.read(p.MODE1)
    # Another program puts the chip to sleep and wakes it without RESTART: the channels stay stopped.
    bus.write_byte_data(0x40, p.MODE1, mode | p.MODE1_SLEEP)
    bus.write_byte_data(0x40, p.MODE1, mode)
    assert chip.high_ticks(2) == 0 and driver.read_channel(2) == 300, "registers hold what the pin does not"
    with pytest.raises(p.Pca9685NotRunning, match="restart pending"):
        driver.check_running()
    clock.sleep(600e-6)
    bus.write_byte_data(0x40, p.MODE1, mode | p.MODE1_RESTART)
    driver.check_running()
    # ... or rewrites MODE1 without auto-increment: four-byte channel access would hit one register.
    bus.write_byte_data(0x40, p.MODE1, p.MODE1_ALLCALL)
    with pytest.raises(p.Pca9685NotRunning, match="auto-increment off"):
        driver.check_running()
    assert p.mode1_fault(p.MODE1_AI | p.MODE1_ALLCALL) is None


def net_drive(chip, forward, reverse):
    """Signed drive a scope across the motor shows for the driver's slow-decay outputs (both start at tick 0)."""
    return (chip.high_ticks(forward) - chip.high_ticks(reverse)) / p.TICKS_PER_PERIOD


@pytest.mark.parametrize(("before", "after"), [(0.0, 0.2), (0.2, 0.0), (0.2, -0.2), (-0.6, 0.0), (0.1, 0.7)])
def test_pca9685_motor_i2c_failure_mid_update_never_drives_the_other_way_or_faster(rig, before, after):
    """B2: the bridge inputs change in one I2C transaction, so a bus error leaves the old drive or the new one.

    Written one channel at a time, a stop from forward 0.2 left the motor in reverse at 0.8 when the second
    write failed (and a start from standstill did the same), until a later write got through.
    """
    _, chip, bus, driver = rig
    driver.configure(50.0)
    motor = Pca9685Motor(driver, forward_channel=15, reverse_channel=14)
    motor.drive(before)
    block_write = bus.write_i2c_block_data
    for failing in range(2):  # the update's first, then its second I2C write fails
        motor.drive(before)
        writes = []

        def flaky(address, register, data, writes=writes, failing=failing):
            writes.append(register)
            if len(writes) == failing + 1:
                raise OSError(121, "Remote I/O error")
            block_write(address, register, data)

        bus.write_i2c_block_data = flaky
        try:
            motor.drive(after)
        except OSError:
            pass
        finally:
            bus.write_i2c_block_data = block_write
        drive = net_drive(chip, 15, 14)
        assert any(drive == pytest.approx(duty, abs=1 / 4096) for duty in (before, after)), (
            f"{before} -> {after} with write {failing + 1} failing drives the motor at {drive}"
        )
    motor.drive(after)
    assert net_drive(chip, 15, 14) == pytest.approx(after, abs=1 / 4096) == motor.readback()


@pytest.mark.parametrize("then", [0.0, 0.3, -0.3])
def test_gpio_motor_reads_back_what_its_pins_do_after_a_failed_write(monkeypatch, then):
    """A GPIO error after the enable PWM went to 0 leaves the motor stopped; the readback must say so.

    It used to report the previous duty, so a stop that had reached the motor read as "may still run".
    """
    gpio = SimulatedGpio()
    motor = GpioMotor(4, 15, 14, 1000.0, gpio=gpio)
    motor.drive(0.6)
    output = gpio.output

    def broken_output(pin, level):
        raise RuntimeError("The GPIO channel has not been set up as an OUTPUT")

    monkeypatch.setattr(gpio, "output", broken_output)
    with pytest.raises(RuntimeError):
        motor.drive(then)
    assert simulated_motor_duty(gpio, motor) == 0.0, "the enable PWM went to 0 before the direction pins"
    assert motor.readback() == 0.0
    monkeypatch.setattr(gpio, "output", output)
    motor.drive(then)
    assert motor.readback() == pytest.approx(then) == simulated_motor_duty(gpio, motor)


def test_block_transfers_respect_the_smbus_32_byte_limit(rig):
    """Linux SMBus block transfers carry at most 32 bytes (I2C_SMBUS_BLOCK_MAX); smbus2 refuses longer ones."""
    _, chip, bus, driver = rig
    with pytest.raises(ValueError):
        bus.write_i2c_block_data(0x40, p.LED0_ON_L, [0] * 33)
    with pytest.raises(ValueError):
        bus.read_i2c_block_data(0x40, p.LED0_ON_L, 33)
    driver.configure(50.0)
    driver.set_pulse_ticks_together({channel: 100 + channel for channel in range(p.CHANNELS)})
    assert [chip.high_ticks(channel) for channel in range(p.CHANNELS)] == [100 + c for c in range(p.CHANNELS)]


@pytest.mark.parametrize(
    ("mode2", "bits"),
    [
        (p.MODE2_OUTDRV | p.MODE2_INVRT, ["INVRT set"]),
        (0x00, ["OUTDRV clear"]),
        (p.MODE2_OUTDRV | p.MODE2_OCH, ["OCH set"]),
        (p.MODE2_OUTDRV | 0x02, ["OUTNE 10"]),
        (p.MODE2_INVRT | p.MODE2_OCH, ["INVRT set", "OUTDRV clear", "OCH set"]),
    ],
)
def test_check_running_names_each_mode2_fault_and_configure_repairs_it(rig, mode2, bits):
    """Another program on the bus rewrites MODE2: the pins no longer do what the channel registers say.

    The readback used to read MODE1 only and called such a chip running.
    """
    _, chip, bus, driver = rig
    driver.configure(50.0)
    driver.set_pulse_ticks(2, 300)
    driver.check_running()
    bus.write_byte_data(0x40, p.MODE2, mode2)
    assert driver.read_channel(2) == 300, "the registers still say 300"
    with pytest.raises(p.Pca9685NotRunning) as fault:
        driver.check_running()
    message = str(fault.value)
    assert f"MODE2 0x{mode2:02X}, configured 0x04" in message
    assert all(bit in message for bit in bits)
    for bit in ("INVRT", "OUTDRV", "OCH", "OUTNE"):
        assert (bit in message) == any(found.startswith(bit) for found in bits), f"{bit} named only when changed"
    driver.configure(50.0)
    driver.set_pulse_ticks(2, 300)
    driver.check_running()
    assert chip.read(p.MODE2) == p.CONFIGURED_MODE2 and chip.high_ticks(2) == 300


def test_mode2_faults_change_the_pins_as_on_the_chip(rig):
    """What each MODE2 bit does to a 300-tick servo pulse, and MODE2's reserved bits reading 0."""
    _, chip, bus, driver = rig
    driver.configure(50.0)
    driver.set_pulse_ticks(2, 300)
    assert chip.high_ticks(2) == 300
    bus.write_byte_data(0x40, p.MODE2, p.MODE2_OUTDRV | p.MODE2_INVRT)
    assert chip.high_ticks(2) == 4096 - 300, "inverted: a 19.5 ms pulse, the servo at full lock"
    bus.write_byte_data(0x40, p.MODE2, p.MODE2_INVRT)
    assert chip.high_ticks(2) == 0, "open-drain: never driven high"
    bus.write_byte_data(0x40, p.MODE2, 0xE0 | p.MODE2_OUTDRV | p.MODE2_OUTNE)
    assert chip.read(p.MODE2) == p.MODE2_OUTDRV | p.MODE2_OUTNE, "bits 7..5 are read-only zeros"
    assert chip.high_ticks(2) == 300, "OUTNE only matters while /OE is high"
    assert p.mode2_fault(0xE0 | p.CONFIGURED_MODE2).startswith(
        "PCA9685 MODE2 rewritten (by another program?): reserved"
    )
    assert p.mode2_fault(p.CONFIGURED_MODE2) is None


@pytest.mark.parametrize(("och", "passes_through"), [(False, set()), (True, {1.0})])
def test_och_decides_whether_a_two_channel_motor_update_changes_both_pins_together(rig, och, passes_through):
    """B2 motor: forward 0.2 -> stop in one block write over channels 14 and 15.

    With OCH clear (``configure``'s MODE2) both pins change at the STOP; with OCH set channel 14 changes at its
    last ACK, before channel 15's bytes arrive, and the motor runs at full forward duty in between.
    """
    _, chip, bus, driver = rig
    driver.configure(50.0)
    motor = Pca9685Motor(driver, forward_channel=15, reverse_channel=14)
    motor.drive(0.2)
    if och:
        bus.write_byte_data(0x40, p.MODE2, p.MODE2_OUTDRV | p.MODE2_OCH)
    seen = []
    receive = chip.receive

    def scoped(register, value):
        receive(register, value)
        seen.append(round(net_drive(chip, 15, 14), 3))

    chip.receive = scoped
    motor.drive(0.0)
    assert net_drive(chip, 15, 14) == 0.0
    assert set(seen) - {0.2, 0.0} == passes_through


def test_gpio_motor_close_stops_the_pwm_even_when_the_coast_write_fails(monkeypatch):
    """Shutdown's release: the duty change to 0 fails (a GPIO library error), the PWM stop must still be tried.

    ``close`` used to raise at the failed coast write, never stopping the PWM: the motor ran on at 0.6.
    """
    gpio = SimulatedGpio()
    motor = GpioMotor(4, 15, 14, 1000.0, gpio=gpio)
    motor.drive(0.6)

    def broken_duty(duty_percent):
        raise RuntimeError("lgpio error")

    monkeypatch.setattr(gpio.pwms[4], "ChangeDutyCycle", broken_duty)
    pwm = gpio.pwms[4]
    with pytest.raises(RuntimeError, match="lgpio error"):
        motor.close()
    assert not pwm.running and gpio.levels == {}, "PWM stopped (enable low) and the pins released"
