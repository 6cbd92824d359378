"""NXP PCA9685 16-channel, 12-bit PWM controller: driver, I2C bus port, and a register-level simulated chip.

The driver talks to an ``I2cBus`` (the subset of the ``smbus``/``smbus2`` API it needs). On the robot that is
``smbus2.SMBus(1)`` (or Debian's ``python3-smbus``), opened by :func:`open_smbus`; in tests and
``hardware:=sim`` dry runs it is a :class:`SimulatedI2cBus` with a :class:`SimulatedPca9685` attached, which
keeps the chip's registers and enforces the datasheet rules the driver must respect (prescaler writes only
in SLEEP, minimum prescale, the RESTART sequence, auto-increment). The same driver code runs in both cases,
so a driver bug shows up in the simulator as a wrong output frequency or pulse, as it would on the car.

Register facts (PCA9685 product data sheet, Rev. 4, sections 7.3 and 7.3.5):
MODE1 0x00, MODE2 0x01, LEDn_ON_L/ON_H/OFF_L/OFF_H at 0x06 + 4*n, ALL_LED_* at 0xFA..0xFD, PRE_SCALE 0xFE;
internal oscillator 25 MHz; ``prescale = round(osc / (4096 * f)) - 1`` (3..255), so the output frequency is
``osc / (4096 * (prescale + 1))``; one PWM period is 4096 ticks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

MODE1 = 0x00
MODE2 = 0x01
LED0_ON_L = 0x06
ALL_LED_ON_L = 0xFA
ALL_LED_OFF_L = 0xFC
PRE_SCALE = 0xFE

# MODE1 bits
MODE1_RESTART = 0x80
MODE1_EXTCLK = 0x40
MODE1_AI = 0x20  # register auto-increment
MODE1_SLEEP = 0x10
MODE1_ALLCALL = 0x01
# MODE2 bits (bits 7..5 are reserved: read-only zeros)
MODE2_INVRT = 0x10
MODE2_OCH = 0x08  # outputs change on each channel's last ACK instead of together at the STOP
MODE2_OUTDRV = 0x04  # totem-pole outputs (servo signal lines need push-pull)
MODE2_OUTNE = 0x03  # what the outputs do while the /OE pin is high
MODE2_WRITABLE = MODE2_INVRT | MODE2_OCH | MODE2_OUTDRV | MODE2_OUTNE
# What ``configure`` writes: not inverted, change at the STOP, totem pole, outputs 0 while /OE is high.
CONFIGURED_MODE2 = MODE2_OUTDRV

LED_FULL = 0x10  # bit 4 of LEDn_ON_H / LEDn_OFF_H: full on / full off (full off wins)
TICKS_PER_PERIOD = 4096
CHANNELS = 16
OSCILLATOR_HZ = 25_000_000.0
PRESCALE_MIN = 3
PRESCALE_MAX = 255
OSCILLATOR_SETTLE_S = 500e-6  # SLEEP must be 0 this long before RESTART may be written
SMBUS_BLOCK_MAX = 32  # Linux I2C_SMBUS_BLOCK_MAX: the most bytes one SMBus block transfer carries (8 channels)

# Power-on register values (PCA9685 product data sheet Rev. 4: table 5 MODE1 0001 0001 = SLEEP | ALLCALL;
# table 6 MODE2 0000 0100 = OUTDRV; table 7 LEDn_ON_L/ON_H/OFF_L 0000 0000 and LEDn_OFF_H 0001 0000 (bit 4,
# full OFF); 7.3.5 PRE_SCALE 1Eh (200 Hz); table 4 SUBADR1..3 E2h/E4h/E8h and ALLCALLADR E0h). A power-on reset
# (or a supply brown-out) returns the chip to exactly these values: asleep, every output off, 200 Hz.
_RESET_MODE1 = MODE1_SLEEP | MODE1_ALLCALL
_RESET_MODE2 = MODE2_OUTDRV
_RESET_PRE_SCALE = 0x1E  # 200 Hz
_RESET_ADDRESSES = {0x02: 0xE2, 0x03: 0xE4, 0x04: 0xE8, 0x05: 0xE0}  # SUBADR1..3, ALLCALLADR


class I2cBus(Protocol):
    """The part of the smbus/smbus2 ``SMBus`` API the driver uses."""

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None:
        """Write one byte to a register."""

    def read_byte_data(self, i2c_addr: int, register: int) -> int:
        """Read one byte from a register."""

    def write_i2c_block_data(self, i2c_addr: int, register: int, data: Sequence[int]) -> None:
        """Write consecutive bytes starting at a register (needs MODE1 auto-increment)."""

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]:
        """Read consecutive bytes starting at a register (needs MODE1 auto-increment)."""


def prescale_for(frequency_hz: float, oscillator_hz: float = OSCILLATOR_HZ) -> int:
    """PRE_SCALE value for a PWM frequency, per the data sheet formula, limited to the chip's 3..255."""
    if not frequency_hz > 0:
        raise ValueError(f"PWM frequency must be positive, got {frequency_hz}")
    value = round(oscillator_hz / (TICKS_PER_PERIOD * frequency_hz)) - 1
    return max(PRESCALE_MIN, min(PRESCALE_MAX, value))


def output_frequency_hz(prescale: int, oscillator_hz: float = OSCILLATOR_HZ) -> float:
    """The PWM frequency the chip actually produces for a PRE_SCALE value."""
    return oscillator_hz / (TICKS_PER_PERIOD * (prescale + 1))


def ticks_to_us(ticks: float, frequency_hz: float) -> float:
    """High time in microseconds of a pulse ``ticks`` long at ``frequency_hz``."""
    return ticks * 1e6 / (frequency_hz * TICKS_PER_PERIOD)


class Pca9685NotRunning(Exception):
    """MODE1 or MODE2 says the pins do not produce what the channel registers hold (reset, brown-out, other program)."""


def mode1_fault(mode1: int) -> str | None:
    """Why a chip with this MODE1 value is not producing its channel outputs as configured, or None if it is.

    ``configure`` leaves MODE1 awake, RESTART clear and auto-increment on. SLEEP is what a power-on reset or
    brown-out leaves (the data sheet's reset value 0x11; the prescaler is back at 200 Hz too); RESTART while
    awake means the chip was put to sleep and woken without a restart (outputs stay off); auto-increment off
    means MODE1 was rewritten, and the driver's four-byte channel reads and writes then hit one register.
    """
    if mode1 & MODE1_SLEEP:
        return f"PCA9685 asleep (reset or brown-out?): outputs off (MODE1 0x{mode1:02X})"
    if mode1 & MODE1_RESTART:
        return (
            f"PCA9685 PWM halted, restart pending (slept and woken by another program?): outputs off "
            f"(MODE1 0x{mode1:02X})"
        )
    if not mode1 & MODE1_AI:
        return (
            f"PCA9685 auto-increment off (reset or MODE1 rewritten by another program?): channel registers "
            f"unreliable (MODE1 0x{mode1:02X})"
        )
    return None


def mode2_fault(mode2: int) -> str | None:
    """Why a chip with this MODE2 value does not drive its pins as ``configure`` set them up, or None if it does.

    MODE2 survives everything but a power-on reset, which puts back ``configure``'s own value (0x04), so only
    another program on the bus changes it, and then the channel registers no longer say what the pins do.
    Every bit that differs from :data:`CONFIGURED_MODE2` is named with what it does to the car.
    """
    changed = (mode2 ^ CONFIGURED_MODE2) & 0xFF
    if not changed:
        return None
    found = []
    if changed & MODE2_INVRT:
        found.append("INVRT set: every output inverted (the servo pulse becomes the period minus the pulse: full lock)")
    if changed & MODE2_OUTDRV:
        found.append("OUTDRV clear: open-drain outputs, the servo and bridge input lines are never driven high")
    if changed & MODE2_OCH:
        found.append("OCH set: outputs change on each channel's ACK, a two-channel motor update passes a mixed state")
    if changed & MODE2_OUTNE:
        found.append(f"OUTNE {mode2 & MODE2_OUTNE:02b}: other outputs while /OE is high")
    if changed & ~MODE2_WRITABLE:
        found.append("reserved bits set (read-only zeros on the chip): the read is corrupt")
    return (
        f"PCA9685 MODE2 rewritten (by another program?): {'; '.join(found)} "
        f"(MODE2 0x{mode2:02X}, configured 0x{CONFIGURED_MODE2:02X})"
    )


def _check_channel(channel: int) -> None:
    if not 0 <= channel < CHANNELS:
        raise ValueError(f"PCA9685 channel must be 0..{CHANNELS - 1}, got {channel}")


class Pca9685:
    """Driver for one PCA9685 on an I2C bus.

    ``configure()`` puts the chip into a known state (totem-pole outputs, auto-increment, the requested PWM
    frequency, all channels off); channels are then set with ``set_pulse_ticks`` / ``set_duty``. Every
    setter writes the four LEDn registers in one auto-increment block so a channel never shows a
    half-updated ON/OFF pair. ``read_channel`` reads a channel's registers back (how the base driver confirms
    every output) and ``frequency_hz`` the prescaler (``configure`` returns it, so the base driver reads it once).
    """

    def __init__(
        self,
        bus: I2cBus,
        address: int = 0x40,
        *,
        oscillator_hz: float = OSCILLATOR_HZ,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """Bind to the chip at ``address`` on ``bus``; nothing is written until ``configure``."""
        self.bus = bus
        self.address = address
        self.oscillator_hz = oscillator_hz
        self._sleep = sleep

    def configure(self, frequency_hz: float) -> float:
        """Initialise the chip for ``frequency_hz`` with every output off; returns the actual frequency."""
        # Asleep first (outputs stop, whatever a previous run left), with auto-increment so the block
        # writes below reach all four registers; set_frequency then wakes and restarts the chip.
        self.bus.write_byte_data(self.address, MODE1, MODE1_AI | MODE1_SLEEP | MODE1_ALLCALL)
        self.all_off()
        self.bus.write_byte_data(self.address, MODE2, CONFIGURED_MODE2)
        return self.set_frequency(frequency_hz)

    def set_frequency(self, frequency_hz: float) -> float:
        """Program the prescaler (data sheet 7.3.5 and 7.3.1.1) and return the frequency actually produced.

        PRE_SCALE only accepts writes while MODE1.SLEEP is set, so: sleep, write, wake, wait for the
        oscillator (500 us), then write RESTART so the channels resume with their held register values.
        """
        prescale = prescale_for(frequency_hz, self.oscillator_hz)
        awake_mode = self.bus.read_byte_data(self.address, MODE1) & ~(MODE1_RESTART | MODE1_SLEEP) & 0xFF
        self.bus.write_byte_data(self.address, MODE1, awake_mode | MODE1_SLEEP)
        self.bus.write_byte_data(self.address, PRE_SCALE, prescale)
        self.bus.write_byte_data(self.address, MODE1, awake_mode)
        self._sleep(OSCILLATOR_SETTLE_S * 2)
        if self.bus.read_byte_data(self.address, MODE1) & MODE1_RESTART:
            self.bus.write_byte_data(self.address, MODE1, awake_mode | MODE1_RESTART)
        return self.frequency_hz()

    def check_running(self) -> None:
        """Read MODE1 and MODE2 and raise ``Pca9685NotRunning`` unless both are as ``configure`` left them.

        Channel registers alone cannot tell: after a reset the driver's writes land in the registers, but
        the sleeping chip outputs nothing (see :func:`mode1_fault`); with MODE2 rewritten the pins are inverted,
        not driven high, or no longer change together (see :func:`mode2_fault`). A MODE1 fault is reported
        without reading MODE2: the chip must be configured again either way. Bus errors propagate as ``OSError``.
        """
        fault = mode1_fault(self.bus.read_byte_data(self.address, MODE1)) or mode2_fault(
            self.bus.read_byte_data(self.address, MODE2)
        )
        if fault:
            raise Pca9685NotRunning(fault)

    def frequency_hz(self) -> float:
        """The output frequency from the PRE_SCALE register as the chip holds it."""
        return output_frequency_hz(self.bus.read_byte_data(self.address, PRE_SCALE), self.oscillator_hz)

    def set_pwm(self, channel: int, on_tick: int, off_tick: int) -> None:
        """Raw LEDn registers: output goes high at ``on_tick`` and low at ``off_tick`` (0..4095 each)."""
        _check_channel(channel)
        if not (0 <= on_tick < TICKS_PER_PERIOD and 0 <= off_tick < TICKS_PER_PERIOD):
            raise ValueError(f"PWM ticks must be 0..4095, got on={on_tick} off={off_tick}")
        self._write_led(LED0_ON_L + 4 * channel, on_tick, off_tick)

    def set_pulse_ticks(self, channel: int, ticks: int) -> None:
        """High for ``ticks`` of the 4096-tick period from the start of the period; 0 = off, 4096 = always on."""
        self.set_pulse_ticks_together({channel: ticks})

    def set_pulse_ticks_together(self, ticks: dict[int, int]) -> None:
        """``set_pulse_ticks`` for several channels, neighbouring channels in one I2C write.

        The four LEDn registers of consecutive channels are consecutive, so one auto-increment block updates
        them all, and with MODE2.OCH = 0 (``configure``'s MODE2) the chip changes those outputs together at
        the transaction's STOP: a bus error then leaves all of them old or all new, never a mix (what an
        H-bridge on two channels needs). Channels that are not neighbours take one write per run, in
        ascending order, at most 8 channels (``SMBUS_BLOCK_MAX`` bytes) per write. Every value is checked
        before anything is written.
        """
        data: dict[int, list[int]] = {}
        for channel, value in ticks.items():
            _check_channel(channel)
            if not 0 <= value <= TICKS_PER_PERIOD:
                raise ValueError(f"pulse ticks must be 0..4096, got {value}")
            if value == 0:
                data[channel] = _led_bytes(0, 0, full_off=True)
            elif value == TICKS_PER_PERIOD:
                data[channel] = _led_bytes(0, 0, full_on=True)
            else:
                data[channel] = _led_bytes(0, value)
        channels = sorted(data)
        while channels:
            run = [channels.pop(0)]
            while channels and channels[0] == run[-1] + 1 and 4 * (len(run) + 1) <= SMBUS_BLOCK_MAX:
                run.append(channels.pop(0))
            block = [byte for channel in run for byte in data[channel]]
            self.bus.write_i2c_block_data(self.address, LED0_ON_L + 4 * run[0], block)

    def set_duty(self, channel: int, duty: float) -> None:
        """Duty cycle 0..1 (rounded to the nearest tick)."""
        if not 0.0 <= duty <= 1.0:
            raise ValueError(f"duty must be within 0..1, got {duty}")
        self.set_pulse_ticks(channel, round(duty * TICKS_PER_PERIOD))

    def read_channel(self, channel: int) -> int:
        """High ticks per period the channel is producing according to its registers (0..4096)."""
        _check_channel(channel)
        on_l, on_h, off_l, off_h = self.bus.read_i2c_block_data(self.address, LED0_ON_L + 4 * channel, 4)
        return _high_ticks(on_l, on_h, off_l, off_h)

    def all_off(self) -> None:
        """Full-off on every channel at once through the ALL_LED registers."""
        self.bus.write_i2c_block_data(self.address, ALL_LED_ON_L, [0, 0, 0, LED_FULL])

    def _write_led(self, register: int, on: int, off: int) -> None:
        self.bus.write_i2c_block_data(self.address, register, _led_bytes(on, off))


def _led_bytes(on: int, off: int, *, full_on: bool = False, full_off: bool = False) -> list[int]:
    """LEDn_ON_L, ON_H, OFF_L, OFF_H for an output high from tick ``on`` to tick ``off`` (or full on / off)."""
    return [
        on & 0xFF,
        (on >> 8) | (LED_FULL if full_on else 0),
        off & 0xFF,
        (off >> 8) | (LED_FULL if full_off else 0),
    ]


def _high_ticks(on_l: int, on_h: int, off_l: int, off_h: int) -> int:
    """High ticks per period for one LEDn register quadruple (full-off has priority over full-on)."""
    if off_h & LED_FULL:
        return 0
    if on_h & LED_FULL:
        return TICKS_PER_PERIOD
    on = ((on_h & 0x0F) << 8) | on_l
    off = ((off_h & 0x0F) << 8) | off_l
    return (off - on) % TICKS_PER_PERIOD


class SimulatedPca9685:
    """Register-level model of one PCA9685 for tests and dry runs.

    Models: power-on register values (at construction and on demand, ``power_on_reset``: a brown-out); MODE1
    auto-increment for block access (without it every byte hits the same register, as on the chip); PRE_SCALE
    writes ignored unless SLEEP is set and values below 3 read back as 3; outputs off while asleep; the RESTART
    flag set by sleeping with active channels and cleared only by writing 1 to it at least 500 us after SLEEP
    was cleared; ALL_LED registers writing every channel and reading back 0; MODE2 (reserved bits 7..5 read 0):
    INVRT inverts every pin, OUTDRV clear makes the pins open-drain, OCH decides when written channel
    registers reach the pins (at the write transaction's STOP, or at the ACK that completes a channel's four
    registers). The /OE pin is taken as tied low, as on the PiCar-B boards, so OUTNE changes no pin. Rule
    violations a real chip would silently ignore are counted in ``ignored_writes`` so tests can assert a
    driver never relies on them.

    ``write`` is one byte in a transaction of its own; a bus carrying several bytes in one transaction calls
    ``receive`` for each and then ``stop``.
    """

    def __init__(self, oscillator_hz: float = OSCILLATOR_HZ, clock: Callable[[], float] = time.monotonic):
        """Chip in its power-on state."""
        self.oscillator_hz = oscillator_hz
        self._clock = clock
        self.registers = bytearray(256)
        self.ignored_writes: list[str] = []
        self.write_count = 0
        self.power_on_reset()

    def power_on_reset(self) -> None:
        """What a power cycle or supply brown-out does to the chip: every register back to its power-on value.

        Asleep (oscillator off, MODE1 0x11), MODE2 0x04, prescaler 0x1E (200 Hz), every channel full off
        (LEDn_OFF_H 0x10, the rest 0), sub-addresses at their defaults (values and sources at
        ``_RESET_MODE1``); the PWM counters stop, so no pin produces anything until the chip is configured and
        woken again. ``ignored_writes`` and ``write_count`` belong to the observer and survive it.
        """
        self.registers[:] = bytes(len(self.registers))
        self.registers[MODE1] = _RESET_MODE1
        self.registers[MODE2] = _RESET_MODE2
        self.registers[PRE_SCALE] = _RESET_PRE_SCALE
        for register, value in _RESET_ADDRESSES.items():
            self.registers[register] = value
        for channel in range(CHANNELS):
            self.registers[LED0_ON_L + 4 * channel + 3] = LED_FULL
        # What the pins follow: the channel registers as of their last output change (see ``stop``), and
        # per channel the registers written since then.
        self._outputs = bytearray(self.registers[LED0_ON_L : LED0_ON_L + 4 * CHANNELS])
        self._loaded: list[set[int]] = [set() for _ in range(CHANNELS)]
        self._awake_since: float | None = None
        self._running = False  # PWM counters running (awake and restarted or never slept with outputs)

    # --- bus side -------------------------------------------------------------------------------------
    def write(self, register: int, value: int) -> None:
        """One byte written to ``register`` over I2C in a transaction of its own (``receive`` then ``stop``)."""
        self.receive(register, value)
        self.stop()

    def receive(self, register: int, value: int) -> None:
        """One data byte the chip acknowledges inside a write transaction, stored in ``register``."""
        self.write_count += 1
        value &= 0xFF
        if register == MODE1:
            self._write_mode1(value)
        elif register == PRE_SCALE:
            if self.registers[MODE1] & MODE1_SLEEP:
                self.registers[PRE_SCALE] = max(PRESCALE_MIN, value)
            else:
                self.ignored_writes.append("PRE_SCALE written while awake (SLEEP=0)")
        elif ALL_LED_ON_L <= register <= ALL_LED_ON_L + 3:
            for channel in range(CHANNELS):
                self._load(channel, register - ALL_LED_ON_L, value)
        elif LED0_ON_L <= register < LED0_ON_L + 4 * CHANNELS:
            self._load((register - LED0_ON_L) // 4, (register - LED0_ON_L) % 4, value)
        elif register == MODE2:
            self.registers[MODE2] = value & MODE2_WRITABLE
        else:
            self.ignored_writes.append(f"write to unsupported register 0x{register:02X}")

    def stop(self) -> None:
        """The STOP that ends a write transaction: with MODE2.OCH clear, every channel written in it changes now.

        So channels written in one transaction change their outputs together, whatever order their bytes came in
        (data sheet 7.3.2: "1 or more registers can be written, in any order, before STOP").
        """
        if not self.registers[MODE2] & MODE2_OCH:
            for channel in range(CHANNELS):
                if self._loaded[channel]:
                    self._change_output(channel)

    def _load(self, channel: int, offset: int, value: int) -> None:
        """A byte into one of a channel's four registers; with MODE2.OCH set the fourth one changes the output.

        Data sheet 7.3.2: "Update on ACK requires all 4 PWM channel registers to be loaded before outputs will
        change on the last ACK".
        """
        self.registers[LED0_ON_L + 4 * channel + offset] = value
        self._loaded[channel].add(offset)
        if self.registers[MODE2] & MODE2_OCH and len(self._loaded[channel]) == 4:
            self._change_output(channel)

    def _change_output(self, channel: int) -> None:
        base = 4 * channel
        self._outputs[base : base + 4] = self.registers[LED0_ON_L + base : LED0_ON_L + base + 4]
        self._loaded[channel].clear()

    def read(self, register: int) -> int:
        """One byte read from ``register`` over I2C (ALL_LED registers are write-only and read 0)."""
        if ALL_LED_ON_L <= register <= ALL_LED_ON_L + 3:
            return 0
        return self.registers[register]

    def _write_mode1(self, value: int) -> None:
        old = self.registers[MODE1]
        now = self._clock()
        going_to_sleep = value & MODE1_SLEEP and not old & MODE1_SLEEP
        waking = old & MODE1_SLEEP and not value & MODE1_SLEEP
        restart = old & MODE1_RESTART  # RESTART is read-only except for the write-1-to-restart action
        if going_to_sleep:
            if self._running and self._any_channel_active():
                restart = MODE1_RESTART
            self._running = False
            self._awake_since = None
        if waking:
            self._awake_since = now
            if not restart:
                self._running = True  # nothing was held: counters start on wake-up
        if value & MODE1_RESTART and old & MODE1_RESTART:
            if value & MODE1_SLEEP or self._awake_since is None:
                self.ignored_writes.append("RESTART written while asleep")
            elif now - self._awake_since < OSCILLATOR_SETTLE_S:
                self.ignored_writes.append("RESTART written before the oscillator settled (500 us)")
            else:
                restart = 0
                self._running = True
        self.registers[MODE1] = (value & ~MODE1_RESTART & 0xFF) | restart

    def _any_channel_active(self) -> bool:
        return any(self._output_ticks(channel) for channel in range(CHANNELS))

    def _output_ticks(self, channel: int) -> int:
        """High ticks of the PWM logic behind a pin, before MODE2's inversion and output stage."""
        return _high_ticks(*self._outputs[4 * channel : 4 * channel + 4])

    # --- observation side (what an oscilloscope on the pins would show) ------------------------------
    @property
    def sleeping(self) -> bool:
        """MODE1.SLEEP: oscillator off."""
        return bool(self.registers[MODE1] & MODE1_SLEEP)

    @property
    def restart_pending(self) -> bool:
        """MODE1.RESTART: channels hold their values but stay stopped until restarted."""
        return bool(self.registers[MODE1] & MODE1_RESTART)

    def output_frequency_hz(self) -> float:
        """PWM frequency produced from the current prescaler (0 while the oscillator is off)."""
        if self.sleeping:
            return 0.0
        return output_frequency_hz(self.registers[PRE_SCALE], self.oscillator_hz)

    def high_ticks(self, channel: int) -> int:
        """Ticks per 4096-tick period a pin is driven high, honouring sleep, pending restart and MODE2.

        INVRT inverts the logic; with OUTDRV clear (open-drain) the pin only ever pulls low and is
        high-impedance otherwise, so a line without a pull-up (a servo signal, a bridge input) sees no high.
        """
        _check_channel(channel)
        if self.sleeping or not self._running:
            ticks = 0
        else:
            ticks = self._output_ticks(channel)
        if self.registers[MODE2] & MODE2_INVRT:
            ticks = TICKS_PER_PERIOD - ticks
        return ticks if self.registers[MODE2] & MODE2_OUTDRV else 0

    def pulse_width_us(self, channel: int) -> float:
        """High time per period on a pin in microseconds at the actual output frequency."""
        frequency = self.output_frequency_hz()
        return ticks_to_us(self.high_ticks(channel), frequency) if frequency else 0.0

    def duty(self, channel: int) -> float:
        """Fraction of each period the pin is high."""
        return self.high_ticks(channel) / TICKS_PER_PERIOD


class SimulatedI2cBus:
    """An ``I2cBus`` with simulated devices attached by address; unknown addresses raise ``OSError`` (NACK)."""

    def __init__(self, devices: dict[int, SimulatedPca9685] | None = None):
        """Bus with the given ``{address: device}`` map."""
        self.devices = dict(devices or {})

    def _device(self, i2c_addr: int) -> SimulatedPca9685:
        try:
            return self.devices[i2c_addr]
        except KeyError:
            raise OSError(121, f"Remote I/O error: no device at 0x{i2c_addr:02X}") from None

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None:
        """Write one byte to a register."""
        self._device(i2c_addr).write(register, value)

    def read_byte_data(self, i2c_addr: int, register: int) -> int:
        """Read one byte from a register."""
        return self._device(i2c_addr).read(register)

    def write_i2c_block_data(self, i2c_addr: int, register: int, data: Sequence[int]) -> None:
        """Block write in one transaction; the register pointer advances only with MODE1.AI set, as on the chip.

        At most ``SMBUS_BLOCK_MAX`` bytes, refused with smbus2's ValueError as on the Pi.
        """
        if len(data) > SMBUS_BLOCK_MAX:
            raise ValueError(f"Data length cannot exceed {SMBUS_BLOCK_MAX} bytes")
        device = self._device(i2c_addr)
        step = 1 if device.read(MODE1) & MODE1_AI else 0
        for offset, value in enumerate(data):
            device.receive(register + offset * step, value)
        device.stop()

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]:
        """Block read; the register pointer advances only with MODE1.AI set, as on the chip (32 bytes at most)."""
        if length > SMBUS_BLOCK_MAX:
            raise ValueError(f"Desired block length over {SMBUS_BLOCK_MAX} bytes")
        device = self._device(i2c_addr)
        step = 1 if device.read(MODE1) & MODE1_AI else 0
        return [device.read(register + offset * step) for offset in range(length)]

    def close(self) -> None:
        """Nothing to release (mirrors ``SMBus.close``)."""


def open_smbus(bus_number: int) -> I2cBus:
    """Open the real I2C bus ``/dev/i2c-<bus_number>`` with smbus2, or Debian/Ubuntu's python3-smbus.

    Imported here, lazily, so that nothing but real hardware needs either package.
    """
    try:
        from smbus2 import SMBus
    except ImportError:
        try:
            from smbus import SMBus
        except ImportError as error:
            raise RuntimeError("real I2C needs smbus2 (pip install smbus2) or python3-smbus (apt)") from error
    return SMBus(bus_number)
