"""The CPU the detector runs on, and what it should run there: ``backend auto`` and ``precision auto``.

The rule (docs/aarch64.md, "The right precision per CPU", has the evidence): ``auto`` never picks a
configuration slower or less faithful than fp32 on this CPU. So it never lowers precision below the file's
(bf16 and int8 round the arithmetic: they are opt-in), and an int8 export, which holds nothing else, runs
int8 with a warning naming the fp32 export to use instead wherever int8 does not pay off:

- x86-64 without VNNI (``avx512_vnni``, ``avx_vnni``, ``amx_int8``): both runtimes' u8s8 kernels saturate with
  the export's 8-bit weights where their inputs do not start at zero (ONNX Runtime's quantisation guide asks for
  ``reduce_range`` there, OpenVINO's CPU guide names the "saturation issue"), so the backends halve those to 7
  bits at load (:func:`~ssd_ros.vision.backends.fit_int8_weights`), which costs fidelity; an export with none
  (``export_model --int8-weight-bits 7``) runs as measured, and SSD300 int8 is faster than fp32 there;
- aarch64 without the dot-product extension (``asimddp``: the Pi 4's Cortex-A72 lacks it, the Pi 5's
  Cortex-A76 has it): ONNX Runtime's MLAS and OpenVINO's aarch64 int8 kernels take their non-dot NEON path;
- OpenVINO on aarch64: its CPU guide lists int8 inference for x86-64 only;
- SSDlite: its depthwise convolutions gain nothing from int8 (measured slower than fp32 with both runtimes
  on an AVX512-VNNI CPU, docs/benchmarks/inference.md).

Reads Linux's ``/proc/cpuinfo``; on aarch64 also the kernel's hardware capabilities (``getauxval``), which
are what the runtimes themselves test and what an emulator reports for the CPU it emulates.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import platform
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "RUNTIME_PACKAGES",
    "CpuInfo",
    "PrecisionChoice",
    "choose_backend",
    "choose_precision",
    "int8_drawback",
    "parse_cpuinfo",
    "require_runtime",
    "this_cpu",
]

X86_INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")
X86_BF16 = ("avx512_bf16", "amx_bf16")
# The Linux aarch64 hardware-capability bits (arch/arm64/include/uapi/asm/hwcap.h), named as /proc/cpuinfo
# names them.
_HWCAP = {1: "asimd", 9: "fphp", 10: "asimdhp", 20: "asimddp", 22: "sve"}
_HWCAP2 = {1: "sve2", 13: "i8mm", 14: "bf16"}
_AT_HWCAP, _AT_HWCAP2 = 16, 26
_ARM_PARTS = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76"}

RUNTIME_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "onnx": "onnx"}
"""The pip package of each Python module a backend needs (pinned in requirements/)."""


@dataclass(frozen=True)
class CpuInfo:
    """A CPU's architecture (``platform.machine()`` spelling), model name and feature flags (Linux's names)."""

    machine: str
    model: str
    features: frozenset[str]

    @property
    def is_arm(self) -> bool:
        """aarch64 (the Raspberry Pi 4 and 5, Jetson, Graviton)."""
        return self.machine in ("aarch64", "arm64")

    @property
    def int8_dot(self) -> bool:
        """Whether the CPU has the 8-bit dot-product instructions int8 inference kernels are built on."""
        return "asimddp" in self.features if self.is_arm else any(f in self.features for f in X86_INT8_DOT)

    @property
    def int8_saturates(self) -> bool:
        """Whether int8 kernels here overflow with 8-bit weights.

        x86 without VNNI sums pairs of uint8 x int8 products into int16 (``vpmaddubsw``), which 8-bit weights
        exceed; VNNI and Arm's dot products accumulate in 32 bits.
        """
        return not self.is_arm and not self.int8_dot

    @property
    def bf16(self) -> bool:
        """Whether the CPU has bf16 arithmetic units."""
        return "bf16" in self.features if self.is_arm else any(f in self.features for f in X86_BF16)

    @property
    def fp16(self) -> bool:
        """Whether the CPU has fp16 vector arithmetic (aarch64 ``asimdhp``; x86 ``avx512_fp16``)."""
        return "asimdhp" in self.features if self.is_arm else "avx512_fp16" in self.features

    def describe(self) -> str:
        """One line: model, architecture and the features that decide the precision."""
        wanted = ("int8 dot product", self.int8_dot), ("fp16", self.fp16), ("bf16", self.bf16)
        return f"{self.model} ({self.machine}): " + ", ".join(f"{name} {'yes' if v else 'no'}" for name, v in wanted)


def parse_cpuinfo(text: str, machine: str) -> CpuInfo:
    """The :class:`CpuInfo` of a Linux ``/proc/cpuinfo`` text (its first processor) on ``machine``."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    arm = machine in ("aarch64", "arm64")
    flags = fields.get("Features" if arm else "flags", "")
    model = fields.get("model name", "")
    if arm:
        model = _ARM_PARTS.get(fields.get("CPU part", "").lower(), model or f"Arm part {fields.get('CPU part', '?')}")
        if fields.get("Model"):
            model = f"{model}, {fields['Model']}"
    return CpuInfo(machine, model or "unknown", frozenset(flags.split()))


def _arm_hwcaps() -> frozenset[str]:
    """The aarch64 hardware capabilities this process sees (empty where ``getauxval`` is unavailable)."""
    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return frozenset()
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    hwcap, hwcap2 = getauxval(_AT_HWCAP), getauxval(_AT_HWCAP2)
    names = [name for bit, name in _HWCAP.items() if hwcap >> bit & 1]
    return frozenset(names + [name for bit, name in _HWCAP2.items() if hwcap2 >> bit & 1])


@functools.cache
def this_cpu() -> CpuInfo:
    """The CPU this process runs on."""
    machine = platform.machine().lower()
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        text = ""
    info = parse_cpuinfo(text, machine)
    if info.is_arm:
        # An emulator shows the host's /proc/cpuinfo but the emulated CPU's capabilities.
        info = CpuInfo(machine, info.model, info.features | _arm_hwcaps())
    return info


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision to run and, when the choice costs speed or fidelity on this CPU, a warning saying so."""

    precision: str
    warning: str | None = None


def int8_drawback(
    cpu: CpuInfo, backend: str, architecture: str, *, saturating: bool = True, halved_at_load: bool = True
) -> str | None:
    """Why int8 is slower or less faithful than fp32 for ``backend`` on ``cpu``, or None when it pays off.

    ``saturating``: whether the export has convolutions whose 8-bit weights saturate int8 kernels without VNNI
    (:attr:`~ssd_ros.vision.export.ExportedModel.int8_saturating`; none with ``export_model
    --int8-weight-bits 7``): the loader halves their weights on such CPUs, except in OpenVINO IR
    (``halved_at_load`` False), whose weights are no longer QDQ initializers the loader can halve.
    """
    if not cpu.int8_dot:
        if cpu.is_arm:
            return (
                f"{cpu.model} has no int8 dot-product instructions (asimddp): {backend} runs int8 on its slower "
                "non-dot NEON kernels"
            )
        if saturating and not halved_at_load:
            return (
                f"{cpu.model} has no VNNI ({', '.join(X86_INT8_DOT)}): {backend}'s int8 kernels saturate with "
                "8-bit weights, and an OpenVINO IR file's weights are not halved at load: run the .onnx int8 export "
                "here, or export with --int8-weight-bits 7"
            )
        if saturating:
            return (
                f"{cpu.model} has no VNNI ({', '.join(X86_INT8_DOT)}): {backend}'s int8 kernels saturate with "
                "8-bit weights, so the weights of this export's convolutions on inputs that do not start at zero "
                "(the image's among them) are halved to 7 bits at load, less faithful than it measured; for this "
                "CPU export with --int8-weight-bits 7"
            )
    if backend == "openvino" and cpu.is_arm:
        return "OpenVINO's CPU plugin lists int8 inference for x86-64 only; on Arm an int8 model is not faster"
    if architecture.startswith("ssdlite"):
        return "SSDlite's depthwise convolutions gain nothing from int8 (measured slower than fp32 with VNNI)"
    return None


FAITHFUL_INT8 = 0.97
"""Share of fp32's live candidates an int8 export must keep, on its own agreement frames, to count as faithful."""


def choose_precision(
    backend: str,
    file_precision: str,
    requested: str = "auto",
    *,
    cpu: CpuInfo,
    architecture: str,
    int8_kept: float | None = None,
    int8_saturating: bool = True,
    int8_halved_at_load: bool = True,
) -> PrecisionChoice:
    """The precision to run a ``file_precision`` model (``fp32`` or ``int8``) with ``backend`` on ``cpu``.

    ``auto`` is the file's own precision: never lower (bf16 and int8 are less faithful than fp32), and an
    int8 export holds nothing else. Whenever the result is int8 or bf16 and the CPU lacks what makes it pay
    off, or the int8 export measured itself less faithful than :data:`FAITHFUL_INT8` in this runtime
    (``int8_kept``: the share of fp32's live candidates it kept, from its metadata), the choice carries a
    warning naming the fp32 alternative. ``int8_saturating`` and ``int8_halved_at_load``: as ``saturating`` and
    ``halved_at_load`` of :func:`int8_drawback`.
    Whether a combination can run at all is the caller's check.
    """
    precision = file_precision if requested == "auto" else requested
    warning = None
    if precision == "int8":
        drawback = int8_drawback(
            cpu, backend, architecture, saturating=int8_saturating, halved_at_load=int8_halved_at_load
        )
        if int8_kept is not None and int8_kept < FAITHFUL_INT8:
            unfaithful = (
                f"this int8 export kept {int8_kept:.1%} of fp32's candidates above the live score threshold on its own "
                f"agreement frames in {backend} (faithful: >= {FAITHFUL_INT8:.0%})"
            )
            drawback = f"{drawback}; {unfaithful}" if drawback else unfaithful
        if drawback:
            warning = f"int8 does not pay off here: {drawback}; run the fp32 export (export_model without --int8)"
    elif precision == "bf16" and not cpu.bf16:
        warning = f"{cpu.model} has no bf16 units: bf16 is emulated or falls back, slower than or equal to fp32"
    return PrecisionChoice(precision, warning)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def choose_backend(
    suffix: str,
    file_precision: str,
    architecture: str,
    *,
    cpu: CpuInfo,
    precision: str = "auto",
    installed: Callable[[str], bool] = _installed,
) -> str:
    """The backend for a model file of ``suffix`` (``.pt``, ``.onnx``, ``.xml``) run at ``precision``: ``backend auto``.

    A checkpoint runs on torch (the reference) and OpenVINO IR on OpenVINO. An ONNX export runs on ONNX
    Runtime (on aarch64 its MLAS kernels use the dot-product extension where the CPU has it), except an int8
    SSD300 on x86-64 when OpenVINO is installed, which was faster there: with VNNI (docs/benchmarks/inference.md)
    and without (an AVX2-only Zen 3, 1 thread, calls interleaved: 2.10x fp32 against ONNX Runtime's 1.59x,
    docs/benchmarks/int8_speed.md); the other runtime when only that one is installed. A precision only OpenVINO
    runs goes to OpenVINO where it is installed: fp16 for any file, bf16 for an export (ONNX Runtime has neither
    kernel; torch runs a checkpoint's bf16). Raises ValueError naming the package to install when no runtime is.
    """
    only_openvino = precision == "fp16" or (precision == "bf16" and suffix != ".pt")
    if suffix == ".xml" or (only_openvino and installed("openvino") and (suffix != ".pt" or installed("onnx"))):
        return "openvino"
    if suffix != ".onnx":
        return "torch"
    if installed("openvino") and (
        not installed("onnxruntime") or (file_precision == "int8" and not cpu.is_arm and architecture == "ssd300_vgg16")
    ):
        return "openvino"
    require_runtime("onnxruntime", installed=installed)
    return "onnxruntime"


def require_runtime(backend: str, *, installed: Callable[[str], bool] = _installed) -> None:
    """Raise ValueError, one line naming the pip package, when ``backend``'s Python package is not installed."""
    if backend in RUNTIME_PACKAGES and not installed(backend):
        package = RUNTIME_PACKAGES[backend]
        raise ValueError(
            f"backend {backend} needs the Python package {package}, which is not installed: "
            f"pip install {package} (the tested version is pinned in requirements/)"
        )
