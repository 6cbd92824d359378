"""``backend auto`` and ``precision auto``: the CPU's features, the documented choice per CPU, and this machine's.

The CPU profiles are the first processor of real ``/proc/cpuinfo`` texts: a Raspberry Pi 4 (Cortex-A72, no dot
product), a Raspberry Pi 5 (Cortex-A76, dot product and fp16), this team's x86 machine (AVX512-VNNI) and an old
x86 desktop (Haswell: AVX2, no VNNI). The choices are those docs/aarch64.md documents with their evidence.
Under the aarch64 emulation (scripts/aarch64_check.sh, ``QEMU_CPU`` set) the real reading is checked against
the emulated CPU model.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings

import pytest
from conftest import make_checkpoint, shared_data

from ssd_ros.vision.cpu import (
    CpuInfo,
    choose_backend,
    choose_precision,
    parse_cpuinfo,
    require_runtime,
    this_cpu,
)
from ssd_ros.vision.detector import Detector
from ssd_ros.vision.export import export_onnx_bytes, quantize_int8, write_export
from ssd_ros.vision.image_codec import read_image_file

PI4 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

Hardware\t: BCM2835
Revision\t: c03111
Model\t\t: Raspberry Pi 4 Model B Rev 1.1
"""
PI5 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

Revision\t: d04170
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""
X86_VNNI = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor @ 2.80GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht \
syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni pclmulqdq ssse3 \
fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm abm \
3dnowprefetch cpuid_fault fsgsbase tsc_adjust bmi1 hle avx2 smep bmi2 erms invpcid rtm avx512f avx512dq rdseed adx \
smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves arat avx512vbmi umip \
avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid fsrm arch_capabilities
"""
X86_OLD = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx fxsr sse sse2 \
ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc arch_perfmon pebs bts rep_good nopl xtopology nonstop_tsc cpuid \
aperfmperf pni pclmulqdq dtes64 monitor ds_cpl vmx est tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid sse4_1 sse4_2 x2apic \
movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand lahf_lm abm cpuid_fault epb invpcid_single pti fsgsbase \
tsc_adjust bmi1 avx2 smep bmi2 erms invpcid xsaveopt dtherm ida arat pln pts md_clear flush_l1d
"""
PROFILES = {
    "pi4_a72": parse_cpuinfo(PI4, "aarch64"),
    "pi5_a76": parse_cpuinfo(PI5, "aarch64"),
    "x86_vnni": parse_cpuinfo(X86_VNNI, "x86_64"),
    "x86_old": parse_cpuinfo(X86_OLD, "x86_64"),
}


@pytest.mark.parametrize(
    ("profile", "model", "int8_dot", "fp16", "bf16"),
    [
        ("pi4_a72", "Cortex-A72, Raspberry Pi 4 Model B Rev 1.1", False, False, False),
        ("pi5_a76", "Cortex-A76, Raspberry Pi 5 Model B Rev 1.0", True, True, False),
        ("x86_vnni", "Intel(R) Xeon(R) Processor @ 2.80GHz", True, False, False),
        ("x86_old", "Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz", False, False, False),
    ],
)
def test_cpuinfo_gives_the_features_that_decide(profile, model, int8_dot, fp16, bf16):
    cpu = PROFILES[profile]
    assert (cpu.model, cpu.int8_dot, cpu.fp16, cpu.bf16) == (model, int8_dot, fp16, bf16)
    # Only x86 without VNNI sums 8-bit products in int16; Arm's non-dot NEON path widens to 32 bits.
    assert cpu.int8_saturates == (profile == "x86_old")
    assert cpu.describe().startswith(model)


SATURATES = "int8 kernels saturate with 8-bit weights, so the weights of this export's convolutions on inputs that"

# (profile, backend, architecture, whether the export has weights that saturate int8 kernels without VNNI) ->
# whether an int8 export runs with a warning naming the fp32 export. 8-bit weights on inputs that do not start at
# zero saturate x86 int8 kernels without VNNI; 7-bit ones (--int8-weight-bits 7) do not.
INT8_TABLE = [
    ("pi4_a72", "onnxruntime", "ssd300_vgg16", True, "no int8 dot-product instructions (asimddp)"),
    ("pi4_a72", "openvino", "ssd300_vgg16", True, "no int8 dot-product instructions (asimddp)"),
    ("pi5_a76", "onnxruntime", "ssd300_vgg16", True, None),
    ("pi5_a76", "onnxruntime", "ssd300_vgg16", False, None),
    ("pi5_a76", "openvino", "ssd300_vgg16", True, "lists int8 inference for x86-64 only"),
    ("x86_vnni", "onnxruntime", "ssd300_vgg16", True, None),
    ("x86_vnni", "openvino", "ssd300_vgg16", True, None),
    ("x86_old", "onnxruntime", "ssd300_vgg16", True, SATURATES),
    ("x86_old", "openvino", "ssd300_vgg16", True, SATURATES),
    ("x86_old", "onnxruntime", "ssd300_vgg16", False, None),
    ("x86_old", "openvino", "ssd300_vgg16", False, None),
    ("x86_vnni", "onnxruntime", "ssdlite320_mobilenet_v3", True, "depthwise convolutions gain nothing from int8"),
    ("x86_old", "openvino", "ssdlite320_mobilenet_v3", False, "depthwise convolutions gain nothing from int8"),
    ("pi5_a76", "onnxruntime", "ssdlite320_mobilenet_v3", True, "depthwise convolutions gain nothing from int8"),
]


@pytest.mark.parametrize(("profile", "backend", "architecture", "saturating", "drawback"), INT8_TABLE)
def test_int8_export_runs_int8_and_warns_where_it_does_not_pay_off(profile, backend, architecture, saturating,
                                                                    drawback):  # fmt: skip
    cpu = PROFILES[profile]
    choice = choose_precision(backend, "int8", "auto", cpu=cpu, architecture=architecture, int8_saturating=saturating)
    assert choice.precision == "int8"  # the file holds nothing else
    if drawback is None:
        assert choice.warning is None
    else:
        assert drawback in choice.warning and "run the fp32 export (export_model without --int8)" in choice.warning


@pytest.mark.parametrize("saturating", [True, False])
def test_int8_ir_file_whose_weights_saturate_this_cpu_points_to_the_onnx_export(saturating):
    """An OpenVINO IR file's weights are not halved at load: 8-bit ones saturate x86 without VNNI as they are."""
    for profile in ("x86_old", "x86_vnni"):
        choice = choose_precision("openvino", "int8", "auto", cpu=PROFILES[profile], architecture="ssd300_vgg16",
                                  int8_saturating=saturating, int8_halved_at_load=False)  # fmt: skip
        if profile == "x86_old" and saturating:
            assert "an OpenVINO IR file's weights are not halved at load" in choice.warning
            assert "run the .onnx int8 export here" in choice.warning and SATURATES not in choice.warning
        else:
            assert choice.warning is None


@pytest.mark.parametrize(("kept", "warns"), [(0.806, True), (0.969, True), (0.97, False), (1.0, False), (None, False)])
def test_int8_export_that_measured_itself_unfaithful_warns(kept, warns):
    """Where int8 pays off (SSD300, x86 with VNNI) only the export's own measured agreement can warn."""
    choice = choose_precision(
        "openvino", "int8", "auto", cpu=PROFILES["x86_vnni"], architecture="ssd300_vgg16", int8_kept=kept
    )
    assert choice.precision == "int8"
    if warns:
        assert f"kept {kept:.1%} of fp32's candidates" in choice.warning and "in openvino" in choice.warning
        assert "run the fp32 export" in choice.warning
    else:
        assert choice.warning is None
    # Beside a CPU drawback, both reasons are given.
    both = choose_precision("onnxruntime", "int8", "auto", cpu=PROFILES["x86_old"], architecture="ssd300_vgg16",
                            int8_kept=0.5)  # fmt: skip
    assert SATURATES in both.warning and "--int8-weight-bits 7" in both.warning and "kept 50.0%" in both.warning


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_auto_never_lowers_an_fp32_file(profile, backend):
    choice = choose_precision(backend, "fp32", "auto", cpu=PROFILES[profile], architecture="ssd300_vgg16")
    assert (choice.precision, choice.warning) == ("fp32", None)


def test_explicit_bf16_warns_on_a_cpu_without_bf16_units():
    pi5 = choose_precision("torch", "fp32", "bf16", cpu=PROFILES["pi5_a76"], architecture="ssd300_vgg16")
    assert pi5.precision == "bf16" and "no bf16 units" in pi5.warning
    amx = CpuInfo("x86_64", "Xeon (Sapphire Rapids)", frozenset({"avx512_bf16", "amx_bf16", "amx_int8"}))
    assert choose_precision("openvino", "fp32", "bf16", cpu=amx, architecture="ssd300_vgg16").warning is None


BOTH = {"onnxruntime", "openvino", "onnx"}.__contains__


@pytest.mark.parametrize(
    ("suffix", "precision", "architecture", "profile", "installed", "expected"),
    [
        (".pt", "fp32", "ssd300_vgg16", "x86_vnni", BOTH, "torch"),
        (".xml", "int8", "ssd300_vgg16", "pi5_a76", BOTH, "openvino"),
        (".onnx", "fp32", "ssd300_vgg16", "x86_vnni", BOTH, "onnxruntime"),
        (".onnx", "int8", "ssd300_vgg16", "x86_vnni", BOTH, "openvino"),  # measured faster there
        (".onnx", "int8", "ssdlite320_mobilenet_v3", "x86_vnni", BOTH, "onnxruntime"),
        (".onnx", "int8", "ssd300_vgg16", "x86_old", BOTH, "openvino"),  # and on x86 without VNNI
        (".onnx", "int8", "ssd300_vgg16", "pi5_a76", BOTH, "onnxruntime"),
        (".onnx", "fp32", "ssdlite320_mobilenet_v3", "pi4_a72", BOTH, "onnxruntime"),
        (".onnx", "fp32", "ssdlite320_mobilenet_v3", "pi4_a72", {"openvino"}.__contains__, "openvino"),
    ],
)
def test_auto_backend_per_file_and_cpu(suffix, precision, architecture, profile, installed, expected):
    cpu = PROFILES[profile]
    assert choose_backend(suffix, precision, architecture, cpu=cpu, installed=installed) == expected


@pytest.mark.parametrize(
    ("suffix", "requested", "installed", "expected"),
    [
        (".onnx", "fp16", BOTH, "openvino"),  # ONNX Runtime has no fp16 or bf16 CPU kernels for SSD
        (".onnx", "bf16", BOTH, "openvino"),
        (".pt", "fp16", BOTH, "openvino"),  # exported in memory
        (".pt", "bf16", BOTH, "torch"),  # torch runs a checkpoint's bf16 itself
        (".onnx", "fp32", BOTH, "onnxruntime"),
        (".onnx", "fp16", {"onnxruntime"}.__contains__, "onnxruntime"),  # then onnxruntime says what is missing
        (".pt", "fp16", {"openvino"}.__contains__, "torch"),  # no onnx to export with: torch says what is missing
    ],
)
def test_auto_backend_runs_the_precision_asked_for(suffix, requested, installed, expected):
    cpu = PROFILES["x86_vnni"]
    assert choose_backend(suffix, "fp32", "ssd300_vgg16", cpu=cpu, precision=requested, installed=installed) == expected


def test_a_missing_runtime_is_one_line_naming_the_package():
    nothing = frozenset().__contains__
    with pytest.raises(ValueError) as error:
        choose_backend(".onnx", "fp32", "ssd300_vgg16", cpu=PROFILES["pi4_a72"], installed=nothing)
    assert "\n" not in str(error.value) and "pip install onnxruntime" in str(error.value)
    with pytest.raises(ValueError, match="backend openvino needs the Python package openvino.*pip install openvino"):
        require_runtime("openvino", installed=nothing)
    require_runtime("torch", installed=nothing)  # torch is the package itself: nothing to check


# ---------------------------------------------------------------------------------------------------
# This machine: the real reading and the real choice through Detector.from_checkpoint

# What the emulated CPU models have (Arm's technical reference manuals; QEMU reports them in the auxv).
EMULATED = {"cortex-a72": {"asimddp": False, "asimdhp": False}, "cortex-a76": {"asimddp": True, "asimdhp": True}}


def test_this_cpu_reads_the_real_features():
    cpu = this_cpu()
    assert cpu.machine == platform.machine().lower()
    with open("/proc/cpuinfo") as f:
        listed = parse_cpuinfo(f.read(), cpu.machine).features
    if not cpu.is_arm:
        assert cpu.features == listed and "sse2" in cpu.features
        return
    # aarch64: the kernel's capabilities, which the runtimes test too; on real hardware /proc/cpuinfo agrees.
    assert "asimd" in cpu.features
    emulated = os.environ.get("QEMU_CPU", "").lower()
    if emulated in EMULATED:
        assert {name: name in cpu.features for name in EMULATED[emulated]} == EMULATED[emulated], cpu.features
    elif listed:
        assert {"asimd", "asimddp", "asimdhp"} & listed <= cpu.features


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """An SSDlite checkpoint with its fp32 and int8 ONNX exports (int8 calibrated on two real rover frames)."""
    folder = tmp_path_factory.mktemp("cpu")
    checkpoint = make_checkpoint(folder / "lite.pt")
    from ssd_ros.vision.checkpoint import load_checkpoint

    model, card = load_checkpoint(checkpoint)
    fp32 = export_onnx_bytes(model, card)
    frames = sorted(shared_data("picar_camera", "detection", "train").glob("*.jpg"))[:2]
    int8 = quantize_int8(fp32, [read_image_file(p) for p in frames], progress=False)
    return {
        "pt": checkpoint,
        "fp32": write_export(fp32, folder / "lite.onnx", "onnx"),
        "int8": write_export(int8, folder / "lite_int8.onnx", "onnx"),
    }


def test_this_machines_choice_through_the_detector(exports):
    settings = {"device": "cpu", "warmup_runs": 0}
    assert Detector.from_checkpoint(exports["pt"], **settings).backend == "torch"
    fp32 = Detector.from_checkpoint(exports["fp32"], **settings)
    assert (fp32.backend, fp32.precision) == ("onnxruntime", "fp32")
    expected = choose_precision(
        "onnxruntime", "int8", "auto", cpu=this_cpu(), architecture="ssdlite320_mobilenet_v3"
    ).warning
    assert expected, "SSDlite int8 warns on every CPU (docs/aarch64.md)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        int8 = Detector.from_checkpoint(exports["int8"], **settings)
    assert (int8.backend, int8.precision) == ("onnxruntime", "int8")
    assert [str(w.message) for w in caught if "int8 does not pay off" in str(w.message)] == [expected]


def test_a_runtime_that_is_not_installed_is_refused_in_one_line(exports, monkeypatch):
    # None in sys.modules is Python's own "this module cannot be imported" marker.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ValueError) as error:
        Detector.from_checkpoint(exports["fp32"], backend="onnxruntime", device="cpu", warmup_runs=0)
    assert "\n" not in str(error.value) and "pip install onnxruntime" in str(error.value)
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ValueError, match="pip install onnxruntime"):
        Detector.from_checkpoint(exports["fp32"], device="cpu", warmup_runs=0)  # auto: neither runtime left
    with pytest.raises(ValueError, match="pip install openvino"):
        Detector.from_checkpoint(exports["pt"].with_suffix(".xml"), device="cpu", warmup_runs=0)
