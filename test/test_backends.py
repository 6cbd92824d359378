"""Exported models and the ONNX Runtime / OpenVINO backends against the torch reference, on real images.

fp32 backends must agree with torch to the arithmetic's rounding (boxes within 0.5 px, scores within 1e-3,
same classes) for SSD300 and SSDlite, untrained and trained. Reduced precision only means something on a
trained model: an SSDlite is trained here from scratch on real rover frames (cached for the module), and
int8 (calibrated on other real rover frames) and bf16 must keep its VOC AP within 1 point of fp32 and
match >= 95% of its detections (same class, IoU >= 0.5).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from conftest import EXECUTABLES, assert_same_detections, lively_ssdlite, shared_data
from torchvision.models.detection import ssd300_vgg16

from ssd_ros.evaluation.voc import VocSplit
from ssd_ros.evaluation.voc_metric import evaluate_detections, matched_fraction
from ssd_ros.tools import export_model
from ssd_ros.vision.backends import (
    INPUT_NAME,
    OnnxRuntimeNetwork,
    cpu_has_bf16,
    cpu_has_fp16,
    fit_int8_weights,
    int8_saturating_convolutions,
)
from ssd_ros.vision.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ssd_ros.vision.cpu import FAITHFUL_INT8, CpuInfo
from ssd_ros.vision.detections import Detections
from ssd_ros.vision.detector import Detector
from ssd_ros.vision.export import (
    INT8_SCHEMES,
    export_onnx_bytes,
    network_spec,
    quantize_int8,
    read_exported,
    write_export,
)
from ssd_ros.vision.image_codec import read_image_file
from ssd_ros.vision.inference import preprocess
from ssd_ros.vision.model import VOC_CLASSES, build_model
from ssd_ros.vision.model_card import ModelCard, coco_model_card
from ssd_ros.vision.model_file import ModelFileError, check_model_file
from training import train

FAST = ("onnxruntime", "openvino")


def _images() -> list[np.ndarray]:
    voc = shared_data("voc2012_sample", "VOC2012", "JPEGImages")
    rover = shared_data("picar_camera", "detection", "test")
    paths = [voc / "2007_000027.jpg", voc / "2007_000032.jpg", sorted(rover.glob("*.jpg"))[0]]
    return [read_image_file(p) for p in paths]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Untrained SSD300 and SSDlite checkpoints (real checkpoint files)."""
    folder = tmp_path_factory.mktemp("untrained")
    torch.manual_seed(0)
    models = {"ssd300_vgg16": build_model("ssd300_vgg16", 21), "ssdlite320_mobilenet_v3": lively_ssdlite(21)}
    paths = {}
    for architecture, model in models.items():
        paths[architecture] = save_checkpoint(
            folder / f"{architecture}.pt", model, ModelCard.for_architecture(architecture, VOC_CLASSES)
        )
    return paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """SSDlite trained from scratch on 8 real rover frames (the recipe of test_train's learning test)."""
    source = shared_data("picar_camera", "detection", "train")
    folder = tmp_path_factory.mktemp("frames")
    for xml in sorted(source.glob("*.xml"))[:8]:
        shutil.copy(xml, folder / xml.name)
        shutil.copy(xml.with_suffix(".jpg"), folder / xml.with_suffix(".jpg").name)
    output = tmp_path_factory.mktemp("run")
    train.train(
        train.parse_args(
            [
                *("--train-folder", str(folder), "--architecture", "ssdlite320_mobilenet_v3", "--no-pretrained"),
                *("--workers", "0", "--no-progress", "--threads", "1", "--output-dir", str(output)),
                *("--iterations", "100", "--batch-size", "4", "--lr", "0.01", "--warmup-iterations", "10"),
                *("--no-augment", "--precise-bn-batches", "4", "--log-every", "50", "--checkpoint-every", "1000"),
            ]
        )
    )
    # Calibration frames: other frames of the same drive, not the evaluation ones.
    calibration = tmp_path_factory.mktemp("calibration")
    for image in sorted(source.glob("*.jpg"))[8:48]:
        shutil.copy(image, calibration / image.name)
    return {"checkpoint": output / "last.pt", "frames": folder, "calibration": calibration}


# ---------------------------------------------------------------------------------------------------
# fp32: every backend equals torch


@pytest.mark.parametrize("architecture", ["ssd300_vgg16", "ssdlite320_mobilenet_v3"])
@pytest.mark.parametrize("backend", FAST)
def test_fp32_backends_equal_torch_untrained(checkpoints, architecture, backend):
    images = _images()
    settings = {"score_threshold": 0.3, "max_detections": 100, "device": "cpu", "warmup_runs": 0}
    reference = Detector.from_checkpoint(checkpoints[architecture], **settings)
    fast = Detector.from_checkpoint(checkpoints[architecture], backend=backend, **settings)
    assert (fast.backend, fast.precision) == (backend, "fp32")
    for image in images:
        expected = reference(image)
        assert len(expected) >= 20, "the comparison needs detections"
        assert_same_detections(expected, fast(image), box_px=0.5, score=1e-3)


@pytest.mark.parametrize("export_format", ["onnx", "openvino"])
def test_trained_model_exported_file_equals_torch(trained, tmp_path, export_format):
    """The exported file (not an in-memory export) on trained weights, through both runtimes."""
    out = tmp_path / ("lite.onnx" if export_format == "onnx" else "lite.xml")
    assert (
        export_model.main(["--checkpoint", str(trained["checkpoint"]), "--format", export_format, "--out", str(out)])
        == 0
    )
    settings = {"score_threshold": 0.05, "device": "cpu", "warmup_runs": 0}
    reference = Detector.from_checkpoint(trained["checkpoint"], **settings)
    frames = [read_image_file(p) for p in sorted(trained["frames"].glob("*.jpg"))]
    for backend in FAST if export_format == "onnx" else ["openvino"]:
        fast = Detector.from_checkpoint(out, backend=backend, **settings)
        assert fast.card == reference.card
        for frame in frames:
            assert_same_detections(reference(frame), fast(frame), box_px=0.5, score=1e-3)


def test_batches_through_an_exported_file(checkpoints, tmp_path):
    onnx_bytes = export_onnx_bytes(*load_checkpoint(checkpoints["ssdlite320_mobilenet_v3"]))
    out = write_export(onnx_bytes, tmp_path / "m.onnx", "onnx")
    images = _images()
    for backend in FAST:
        detector = Detector.from_checkpoint(out, backend=backend, device="cpu", warmup_runs=0)
        singles = [detector(image) for image in images]
        for single, batched in zip(singles, detector.detect_batch(images)):
            assert_same_detections(single, batched, box_px=0.01, score=1e-5)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is a Linux call")
def test_default_threads_are_the_cores_this_process_may_use(checkpoints, tmp_path):
    out = write_export(
        export_onnx_bytes(*load_checkpoint(checkpoints["ssdlite320_mobilenet_v3"])), tmp_path / "m.onnx", "onnx"
    )
    reference = Detector.from_checkpoint(checkpoints["ssdlite320_mobilenet_v3"], backend="torch", device="cpu",
                                         num_threads=2, warmup_runs=0)  # fmt: skip
    allowed = os.sched_getaffinity(0)
    try:
        # As taskset or a one-core container would. (OpenVINO reads the affinity itself, once, as it loads.)
        os.sched_setaffinity(0, {min(allowed)})
        assert Detector.from_checkpoint(out, backend="onnxruntime", warmup_runs=0).num_threads == 1
    finally:
        os.sched_setaffinity(0, allowed)
    # torch's threads are process-wide: the runtimes' detectors set them to 1, and the torch detector says so.
    assert reference.num_threads == torch.get_num_threads() == 1


@pytest.mark.parametrize("export_format", ["onnx", "openvino"])
def test_runtimes_decode_every_default_box_as_torchvision(tmp_path, export_format):
    """The boxes the runtimes decode in their graph equal torchvision's box coder on all default boxes.

    Large random regression biases push boxes past the coder's size clamp and past the image edges, where a
    decoding step in the wrong place or order shows.
    """
    model = lively_ssdlite(21)
    with torch.no_grad():
        for layer in model.head.regression_head.module_list:
            layer[-1].weight.mul_(0.01)
            layer[-1].bias.normal_(0.0, 15.0)
    card = ModelCard.for_architecture("ssdlite320_mobilenet_v3", VOC_CLASSES)
    checkpoint = save_checkpoint(tmp_path / "lite.pt", model, card)
    out = write_export(export_onnx_bytes(model, card), tmp_path / "lite.onnx", "onnx")
    if export_format == "openvino":
        out = write_export(out.read_bytes(), tmp_path / "lite.xml", "openvino")
    reference = Detector.from_checkpoint(checkpoint, device="cpu", warmup_runs=0).network
    batch = preprocess(_images(), reference.spec)
    expected_boxes, expected_scores = reference(batch)
    wh = (expected_boxes[..., 2:] - expected_boxes[..., :2]).flatten()
    assert (wh == 0).any() and (wh > 300).any(), "the regressions should reach the edges and the clamp"
    for backend in FAST if export_format == "onnx" else ["openvino"]:
        boxes, scores = Detector.from_checkpoint(out, backend=backend, device="cpu", warmup_runs=0).network(batch)
        assert boxes.shape == expected_boxes.shape
        torch.testing.assert_close(boxes, expected_boxes, atol=0.01, rtol=1e-4)
        torch.testing.assert_close(scores, expected_scores, atol=1e-4, rtol=1e-3)


# ---------------------------------------------------------------------------------------------------
# Reduced precision on a trained model


def _ap_and_detections(detector: Detector, folder: Path) -> tuple[float, list[Detections]]:
    split = VocSplit.from_folder(folder)
    detections = detector.detect_batch([read_image_file(item.image_path) for item in split])
    annotations = [item.annotation() for item in split]
    result = evaluate_detections(detections, annotations, detector.class_names, metric="11point")
    return result.map, detections


def test_int8_and_bf16_keep_the_accuracy_of_fp32(trained, tmp_path, capsys):
    int8 = tmp_path / "lite_int8.onnx"
    argv = ["--checkpoint", str(trained["checkpoint"]), "--int8", "--calibration", str(trained["calibration"])]
    assert export_model.main([*argv, "--out", str(int8), "--quiet"]) == 0
    exported = read_exported(int8)
    assert exported.precision == "int8" and exported.int8["scheme"] in INT8_SCHEMES
    # The export kept the scheme it measured closest to fp32, in the worse of the two runtimes.
    measured = exported.int8["measured"]
    assert set(measured) == set(INT8_SCHEMES)  # SSDlite has squeeze-excitation blocks: every scheme fits
    worst = {scheme: max(m["score_error_p95"] for m in runtimes.values()) for scheme, runtimes in measured.items()}
    assert worst[exported.int8["scheme"]] == min(worst.values())
    # Measured calibrated on three quarters of the images, against the other quarter; the file on all of them.
    frames = len(list(trained["calibration"].glob("*.jpg")))
    measured_on = exported.int8["scheme_calibration_images"] + exported.int8["agreement_images"]
    assert exported.int8["agreement_images_held_out"] and measured_on == frames
    assert exported.int8["calibration_images"] == frames
    int8_nodes = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= int8_nodes
    # The user is told what was measured, per runtime, and warned where it is not faithful.
    said = capsys.readouterr().out
    assert f"int8 scheme '{exported.int8['scheme']}' (the closest to fp32 of {len(INT8_SCHEMES)} tried)" in said
    for runtime, agreement in measured[exported.int8["scheme"]].items():
        assert f"{runtime}: kept {agreement['live_pairs_kept']:.1%} of fp32's {agreement['live_pairs']} " in said
    assert ("warning: below 97%" in said) == any(exported.int8_kept(runtime) < FAITHFUL_INT8 for runtime in FAST)

    settings = {"score_threshold": 0.3, "device": "cpu", "warmup_runs": 0}
    fp32_ap, fp32 = _ap_and_detections(Detector.from_checkpoint(trained["checkpoint"], **settings), trained["frames"])
    assert fp32_ap > 0.9, f"the trained model should find its training objects (AP {fp32_ap:.3f})"
    assert sum(map(len, fp32)) >= 8
    # The file's own measured agreement decides whether loading it warns that it is not faithful.
    int8_detectors = {}
    for runtime in FAST:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            int8_detectors[runtime] = Detector.from_checkpoint(int8, backend=runtime, **settings)
        unfaithful = any("of fp32's candidates above the live score threshold" in str(w.message) for w in caught)
        assert unfaithful == (exported.int8_kept(runtime) < FAITHFUL_INT8), runtime
    candidates = {
        "onnxruntime int8": int8_detectors["onnxruntime"],
        "openvino int8": int8_detectors["openvino"],
        "torch bf16": Detector.from_checkpoint(trained["checkpoint"], precision="bf16", **settings),
    }
    # The benchmark's reference for int8: the file's arithmetic run exactly (QDQ as float ops), no int8 kernels.
    exact = OnnxRuntimeNetwork(int8, exported.spec, precision="int8", optimize=False)
    card = exported.card
    candidates["onnxruntime int8 exact"] = Detector(
        exact, card.class_names, card=card, label_map=card.label_map, warmup_runs=0, score_threshold=0.3
    )
    if cpu_has_bf16():
        candidates["openvino bf16"] = Detector.from_checkpoint(
            trained["checkpoint"], backend="openvino", precision="bf16", **settings
        )
    # fp16 is what OpenVINO runs on Arm CPUs by default; where the CPU has no fp16 arithmetic (most x86) the
    # plugin runs bf16 if the CPU has bf16 units, else f32, and the detector says which.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fp16 = Detector.from_checkpoint(trained["checkpoint"], backend="openvino", precision="fp16", **settings)
    runs_fp16 = "fp16" if cpu_has_fp16() else "bf16" if cpu_has_bf16() else "fp32"
    assert fp16.precision == runs_fp16
    said = f"fp16 requested but this CPU has no fp16 arithmetic: OpenVINO runs {runs_fp16}"
    assert (runs_fp16 != "fp16") == any(said in str(w.message) for w in caught)
    candidates["openvino fp16"] = fp16
    with capsys.disabled():
        print(f"\nfp32 AP {fp32_ap:.4f}, {sum(map(len, fp32))} detections")
    for name, detector in candidates.items():
        assert detector.precision == (runs_fp16 if name == "openvino fp16" else name.split()[1])
        ap, detections = _ap_and_detections(detector, trained["frames"])
        fraction = matched_fraction(fp32, detections)
        with capsys.disabled():
            print(f"{name}: AP {ap:.4f} (fp32 {fp32_ap:.4f}), {fraction:.1%} of fp32 detections matched")
        assert abs(ap - fp32_ap) <= 0.01, name
        assert fraction >= 0.95, name


def test_int8_file_is_calibrated_on_every_image_the_held_out_ones_too(checkpoints):
    """The scheme check holds every 4th image out of calibration; the file it keeps is then calibrated on all.

    MinMax ranges come from the most extreme frames, so an export that dropped a quarter of them would be less
    faithful. Here the first image (held out of the scheme check) alone spans the full grey range: the network
    input's quantisation range must cover it.
    """
    rover = sorted(shared_data("picar_camera", "detection", "train").glob("*.jpg"))[8:16]
    images = [read_image_file(p) for p in rover]
    images[0] = cv2.normalize(images[0], None, 0, 255, cv2.NORM_MINMAX)  # spans 0..255
    images[1:] = [(64 + image // 2).astype(np.uint8) for image in images[1:]]  # 64..191: none reaches the ends
    model, card = load_checkpoint(checkpoints["ssdlite320_mobilenet_v3"])
    onnx_bytes = export_onnx_bytes(model, card)
    int8 = onnx.load_from_string(quantize_int8(onnx_bytes, images, progress=False))
    spec = network_spec(onnx_bytes)
    batches = [preprocess([image], spec) for image in images]
    span_all = max(b.max() for b in batches) - min(b.min() for b in batches)
    checked = [b for i, b in enumerate(batches) if i % 4]  # what the scheme check calibrated on
    assert max(b.max() for b in checked) - min(b.min() for b in checked) < 0.9 * span_all
    (node,) = [n for n in int8.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == INPUT_NAME]
    tensors = {t.name: onnx.numpy_helper.to_array(t) for t in int8.graph.initializer}
    scale, zero_point = float(tensors[node.input[1]]), tensors[node.input[2]]  # uint8 or int8 (NNCF, symmetric)
    limits = np.iinfo(zero_point.dtype)
    lowest, highest = (scale * (q - int(zero_point)) for q in (limits.min, limits.max))
    tolerance = scale  # the zero point is rounded to a step
    assert lowest <= min(b.min() for b in batches) + tolerance and highest >= max(b.max() for b in batches) - tolerance


def _int8_weights(onnx_model: bytes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each int8 convolution weight of a QDQ graph: its quantised values and scale, by name."""
    graph = onnx.load_from_string(onnx_model).graph
    tensors = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    return {
        n.input[0]: (tensors[n.input[0]], tensors[n.input[1]])
        for n in graph.node
        if n.op_type == "DequantizeLinear" and tensors.get(n.input[0], np.zeros(0, np.float32)).dtype == np.int8
    }


def _weights_on_inputs_from_zero(onnx_model: bytes) -> dict[str, bool]:
    """Each int8 convolution weight's name: whether the convolution's input is uint8 with zero point 0."""
    graph = onnx.load_from_string(onnx_model).graph
    tensors = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    producers = {output: n for n in graph.node for output in n.output}
    weights = _int8_weights(onnx_model)
    result = {}
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        weight, source = producers.get(conv.input[1]), producers.get(conv.input[0])  # None: fp32 (excitation)
        weight = weight and weight.input[0]
        if weight in weights and source is not None and source.op_type == "DequantizeLinear":
            zero_point = tensors[source.input[2]]
            result[weight] = zero_point.dtype == np.uint8 and not zero_point.any()
    return result


def test_int8_weights_fit_cpus_whose_kernels_saturate(checkpoints, tmp_path, capfd):
    """x86 without VNNI sums two uint8 x int8 products in int16: 8-bit weights on inputs that do not start at zero
    are halved at load, 7-bit ones and those on inputs from zero (ReLU outputs) kept.

    On such a CPU (an AVX2-only Zen 3) this module's int8 test failed with the 8-bit weights as they were
    (OpenVINO AP 0.75 against 1.00). The CPUs are profiles, so this holds wherever the suite runs.
    """
    no_vnni = CpuInfo("x86_64", "Haswell", frozenset({"avx2"}))
    vnni, pi4 = (
        CpuInfo("x86_64", "Ice Lake", frozenset({"avx2", "avx512_vnni"})),
        CpuInfo("aarch64", "A72", frozenset()),
    )
    rover = sorted(shared_data("picar_camera", "detection", "train").glob("*.jpg"))[8:12]
    images = [read_image_file(p) for p in rover]
    model, card = load_checkpoint(checkpoints["ssdlite320_mobilenet_v3"])
    fp32 = export_onnx_bytes(model, card)
    by_onnxruntime = [name for name, scheme in INT8_SCHEMES.items() if scheme.quantizer == "onnxruntime"]
    eight, seven = (
        quantize_int8(fp32, images, weight_bits=bits, schemes=by_onnxruntime, progress=False) for bits in (8, 7)
    )
    capfd.readouterr()
    by_nncf = [name for name, scheme in INT8_SCHEMES.items() if scheme.quantizer == "nncf"]
    nncf_file = quantize_int8(fp32, images, schemes=by_nncf, progress=False)
    assert "Statistics collection" not in "".join(capfd.readouterr())  # NNCF's own progress bars are off too
    weights = _int8_weights(eight)
    assert len(weights) >= 40 and max(int(np.abs(w.astype(int)).max()) for w, _ in weights.values()) == 127
    assert max(int(np.abs(w.astype(int)).max()) for w, _ in _int8_weights(seven).values()) == 64
    # Where the kernels do not saturate, and for a 7-bit file anywhere, the file runs as it is.
    assert fit_int8_weights(eight, vnni) is eight and fit_int8_weights(eight, pi4) is eight
    assert fit_int8_weights(seven, no_vnni) is seven and int8_saturating_convolutions(seven) == 0
    for onnx_model in (eight, nncf_file):
        from_zero = _weights_on_inputs_from_zero(onnx_model)
        original, fitted = _int8_weights(onnx_model), _int8_weights(fit_int8_weights(onnx_model, no_vnni))
        assert fitted.keys() == original.keys()
        halved = []
        for name, (values, scale) in fitted.items():
            old_values, old_scale = original[name]
            if from_zero[name] or np.abs(old_values.astype(int)).max() <= 64:
                np.testing.assert_array_equal(values, old_values)
                np.testing.assert_array_equal(scale, old_scale)
                continue
            # Halved: every weight within -64..64, the same real value to within one 8-bit step of its channel.
            halved.append(name)
            assert np.abs(values.astype(int)).max() <= 64
            np.testing.assert_allclose(scale, 2 * old_scale)
            assert np.all(np.abs(values.astype(int) * 2 - old_values.astype(int)) <= 1)  # one 8-bit step
        # Both kinds exist in MobileNetV3 (ReLU and hard-swish blocks), so both branches above were taken.
        assert 0 < len(halved) == int8_saturating_convolutions(onnx_model) and any(from_zero.values())
    # The image's convolution: halved in ONNX Runtime's file (uint8 with the image's zero point), while NNCF's
    # overflow fix gives it 7-bit weights, the others 8.
    first = next(iter(_weights_on_inputs_from_zero(eight)))
    assert np.abs(_int8_weights(fit_int8_weights(eight, no_vnni))[first][0].astype(int)).max() <= 64
    ranges = {name: int(np.abs(values.astype(int)).max()) for name, (values, _) in _int8_weights(nncf_file).items()}
    assert ranges.pop(next(iter(_weights_on_inputs_from_zero(nncf_file)))) <= 64 and max(ranges.values()) == 127
    # What the export records: NNCF's SSDlite has signed (hard-swish) inputs beyond its 7-bit first convolution.
    for bits, onnx_model, saturating in ((8, eight, True), (7, seven, False), (8, nncf_file, True)):
        exported = read_exported(write_export(onnx_model, tmp_path / "int8.onnx", "onnx"))
        assert (exported.int8_weight_bits, exported.int8_saturating) == (bits, saturating)


def test_int8_export_without_nncf_tries_onnxruntime_schemes_and_says_so(checkpoints, monkeypatch, tmp_path):
    """NNCF is an export-only dependency the robot's requirements leave out: without it the export still works."""
    monkeypatch.setitem(sys.modules, "nncf", None)  # how Python marks a module that cannot be imported
    rover = sorted(shared_data("picar_camera", "detection", "train").glob("*.jpg"))[8:12]
    model, card = load_checkpoint(checkpoints["ssdlite320_mobilenet_v3"])
    with pytest.warns(UserWarning, match="nncf is not installed: the int8 export tries ONNX Runtime's"):
        int8 = quantize_int8(export_onnx_bytes(model, card), [read_image_file(p) for p in rover], progress=False)
    measured = read_exported(write_export(int8, tmp_path / "int8.onnx", "onnx")).int8["measured"]
    assert set(measured) == {name for name, scheme in INT8_SCHEMES.items() if scheme.quantizer == "onnxruntime"}


def test_int8_export_goes_on_without_an_nncf_scheme_that_fails(checkpoints, monkeypatch, tmp_path):
    """NNCF's graph passes do not know every network: its failure skips its scheme, named, and the export goes on."""
    from ssd_ros.tools.export_model import int8_report
    from ssd_ros.vision.export import _import_nncf

    def quantize(*_args, **_kwargs):  # what NNCF raises on a graph it cannot transform
        raise RuntimeError("Exception from src/core.cpp:1:\nunsupported pattern in node /backbone/Conv")

    monkeypatch.setattr(_import_nncf(), "quantize", quantize)
    rover = sorted(shared_data("picar_camera", "detection", "train").glob("*.jpg"))[8:12]
    model, card = load_checkpoint(checkpoints["ssdlite320_mobilenet_v3"])
    fp32 = export_onnx_bytes(model, card)
    images = [read_image_file(p) for p in rover]
    by_nncf = [name for name, scheme in INT8_SCHEMES.items() if scheme.quantizer == "nncf"]
    with pytest.warns(UserWarning, match=f"int8 scheme '{by_nncf[0]}' failed and is skipped .RuntimeError: unsuppo"):
        int8 = quantize_int8(fp32, images, progress=False)
    exported = read_exported(write_export(int8, tmp_path / "int8.onnx", "onnx"))
    assert set(exported.int8["measured"]) == set(INT8_SCHEMES) - set(by_nncf)
    assert exported.int8["failed"] == {by_nncf[0]: "RuntimeError: unsupported pattern in node /backbone/Conv"}
    assert f"int8 scheme '{by_nncf[0]}' failed: RuntimeError: unsupported pattern" in "\n".join(int8_report(exported))
    with pytest.raises(ValueError, match="every int8 scheme asked for failed"), pytest.warns(UserWarning):
        quantize_int8(fp32, images, schemes=by_nncf, progress=False)


def test_nncf_sends_no_telemetry_from_an_export():
    """NNCF sends usage telemetry by default, without asking (openvino_telemetry); the export switches it off.

    In a process of its own: NNCF decides at import, and never sends from under pytest.
    """
    environment = {k: v for k, v in os.environ.items() if k not in ("NNCF_CI", "NNCF_DEV", "CI")}

    def sends_telemetry_after(statement: str) -> bool:
        code = f"{statement}; from nncf.telemetry import wrapper as w; print(isinstance(w.telemetry, w.NNCFTelemetry))"
        return (
            subprocess.run(
                [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True, timeout=300
            ).stdout.split()[-1]
            == "True"
        )

    assert sends_telemetry_after("import nncf")  # what a plain import gives
    assert not sends_telemetry_after("from ssd_ros.vision.export import _import_nncf; _import_nncf()")


# ---------------------------------------------------------------------------------------------------
# Exported files: card, bad files, COCO, the command


def test_exported_file_round_trips_its_card(checkpoints, tmp_path):
    model, card = load_checkpoint(checkpoints["ssd300_vgg16"])
    onnx_bytes = export_onnx_bytes(model, card)
    for name, export_format in (("m.onnx", "onnx"), ("m.xml", "openvino")):
        exported = read_exported(write_export(onnx_bytes, tmp_path / name, export_format))
        assert exported.card == card and exported.precision == "fp32"
        assert exported.feature_map_sizes == ((38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1))
        assert exported.spec.anchors.shape == (8732, 4)
    assert (tmp_path / "m.bin").exists() and not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="is OpenVINO IR: run it with backend openvino"):
        Detector.from_checkpoint(tmp_path / "m.xml", backend="onnxruntime")


def test_an_interrupted_ir_export_never_pairs_an_xml_with_other_weights(checkpoints, tmp_path, monkeypatch):
    """Re-exporting an IR over an older one, interrupted between its two renames: the old .xml is not left to be
    read with the new weights (same size: the same network trained further), it is gone, a clear error."""
    model, card = load_checkpoint(checkpoints["ssdlite320_mobilenet_v3"])
    out = write_export(export_onnx_bytes(model, card), tmp_path / "m.xml", "openvino")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)  # trained further: the same sizes, other weights
    replaced = []

    def replace_once(source, target):
        if replaced:
            raise OSError(28, "No space left on device")
        replaced.append(Path(target).name)
        os.rename(source, target)

    monkeypatch.setattr(os, "replace", replace_once)
    with pytest.raises(OSError, match="No space left"):
        write_export(export_onnx_bytes(model, card), out, "openvino")
    monkeypatch.undo()
    assert replaced == ["m.bin"] and not out.exists() and not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(CheckpointError, match=r"m\.xml: no such file"):
        Detector.from_checkpoint(out)
    assert read_exported(write_export(export_onnx_bytes(model, card), out, "openvino")).card == card


def test_corrupted_and_foreign_files_are_clear_errors(checkpoints, tmp_path):
    onnx_bytes = export_onnx_bytes(*load_checkpoint(checkpoints["ssdlite320_mobilenet_v3"]))
    good = write_export(onnx_bytes, tmp_path / "g.onnx", "onnx")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.onnx: is not a readable \.onnx file"):
        Detector.from_checkpoint(cut, backend="onnxruntime")
    # A valid ONNX model someone else made: no card.
    proto = onnx.load(str(good))
    del proto.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, str(foreign))
    with pytest.raises(CheckpointError, match="foreign.onnx: is an ONNX model without an ssd_ros model card"):
        Detector.from_checkpoint(foreign, backend="openvino")
    # A newer ssd_ros's export is not malformed: this code is too old for it.
    newer = "has model card version 99; this code reads up to 1 .update ssd_ros."
    malformed = "has a malformed ssd_ros model card .unsupported metadata version 'one'."
    for version, problem in ((99, newer), ("one", malformed)):
        proto = onnx.load(str(good))
        entry = next(e for e in proto.metadata_props if e.key == "ssd_ros")
        entry.value = json.dumps({**json.loads(entry.value), "format_version": version})
        onnx.save(proto, str(tmp_path / "versioned.onnx"))
        with pytest.raises(CheckpointError, match=f"versioned.onnx: {problem}"):
            Detector.from_checkpoint(tmp_path / "versioned.onnx")
    with pytest.raises(CheckpointError, match="no such file"):
        Detector.from_checkpoint(tmp_path / "missing.xml", backend="openvino")
    # OpenVINO IR: the .bin left behind, or cut short. The error names the cause, not where OpenVINO raised it.
    ir = write_export(onnx_bytes, tmp_path / "ir" / "g.xml", "openvino")
    alone = tmp_path / "alone.xml"
    shutil.copy(ir, alone)
    with pytest.raises(CheckpointError, match=r"alone\.xml: its weights alone\.bin are missing beside it"):
        Detector.from_checkpoint(alone)
    shutil.copy(ir, tmp_path / "short.xml")
    (tmp_path / "short.bin").write_bytes(ir.with_suffix(".bin").read_bytes()[:1000])
    with pytest.raises(
        CheckpointError, match=r"short\.xml: is not a readable \.xml file \(RuntimeError: Incorrect weights"
    ):
        Detector.from_checkpoint(tmp_path / "short.xml")
    with pytest.raises(ValueError, match="exported model: run it with backend onnxruntime or openvino"):
        Detector.from_checkpoint(good, backend="torch")
    shutil.copy(good, tmp_path / "upper.ONNX")  # not "is not a checkpoint": the name is what is wrong
    with pytest.raises(CheckpointError, match=r"upper\.ONNX: exports are named in lower case: rename it to \*\.onnx"):
        Detector.from_checkpoint(tmp_path / "upper.ONNX")
    with pytest.raises(ModelFileError, match=r"or an OpenVINO IR \(\.xml\) \(in lower case\)"):
        check_model_file(tmp_path / "upper.ONNX")
    with pytest.raises(ValueError, match="int8 needs a calibrated int8 export"):
        Detector.from_checkpoint(checkpoints["ssdlite320_mobilenet_v3"], backend="onnxruntime", precision="int8")
    with pytest.raises(ValueError, match="fp32 export; precision int8 needs an int8 export"):
        Detector.from_checkpoint(good, backend="onnxruntime", precision="int8")
    with pytest.raises(ValueError, match="no bf16 CPU path"):
        Detector.from_checkpoint(good, backend="onnxruntime", precision="bf16")
    with pytest.raises(ValueError, match="no fp16 CPU path for SSD; use backend openvino"):
        Detector.from_checkpoint(good, backend="onnxruntime", precision="fp16")
    with warnings.catch_warnings():  # a CPU without fp16 arithmetic says what OpenVINO runs instead
        warnings.simplefilter("ignore")
        assert Detector.from_checkpoint(good, precision="fp16", warmup_runs=0).backend == "openvino"  # auto
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        Detector.from_checkpoint(good, backend="tensorrt")
    with pytest.raises(
        ValueError, match=r"g\.onnx is an exported model, which runs on the CPU: .* its \.pt checkpoint"
    ):
        Detector.from_checkpoint(good, backend="openvino", device="cuda")


def test_coco_model_exports_with_its_label_map(tmp_path):
    """torchvision's COCO SSD300 structure (91 outputs, N/A ids) with random weights: no download here."""
    torch.manual_seed(0)
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91).eval()
    card = coco_model_card()
    out = write_export(export_onnx_bytes(model, card), tmp_path / "coco.onnx", "onnx")
    fast = Detector.from_checkpoint(out, backend="onnxruntime", score_threshold=0.01, device="cpu", warmup_runs=0)
    reference = Detector(model, card.class_names, label_map=card.label_map, score_threshold=0.01, device="cpu")
    assert fast.class_names == card.class_names and len(card.class_names) == 80
    image = _images()[0]
    expected = reference(image)
    assert len(expected) > 0 and "N/A" not in expected.names
    assert_same_detections(expected, fast(image), box_px=0.5, score=1e-3)


def test_export_command_refuses_bad_input_with_one_line(checkpoints, tmp_path, capsys):
    not_ours = tmp_path / "random.pt"
    not_ours.write_bytes(b"\x00" * 100)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    # Not a folder: cannot be written into, even by root (chmod would not stop root).
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    cut = tmp_path / "cut"
    cut.mkdir()
    frame = sorted(shared_data("picar_camera", "detection", "test").glob("*.jpg"))[0].read_bytes()
    (cut / "frame.JPG").write_bytes(frame[: len(frame) // 2])  # any letter case is an image
    good = str(checkpoints["ssdlite320_mobilenet_v3"])
    cases = {
        "random.pt": ["--checkpoint", str(not_ours), "--out", str(tmp_path / "new" / "folders" / "a.onnx")],
        "no images": ["--checkpoint", good, "--int8", "--calibration", str(empty), "--out", str(tmp_path / "b.onnx")],
        f"--calibration: {cut / 'frame.JPG'}: truncated JPEG": [
            *("--checkpoint", good, "--int8", "--calibration", str(cut), "--out", str(tmp_path / "e.onnx"))
        ],
        "cannot write": ["--checkpoint", good, "--out", str(blocker / "c.onnx")],
        "is a .xml file": ["--checkpoint", good, "--format", "openvino", "--out", str(tmp_path / "d.onnx")],
    }
    for expected, argv in cases.items():
        assert export_model.main(argv) == 2, expected
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err and err.startswith("export_model: error:"), err
    # Nothing written, not even the folders a refused --out would have needed.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "cut", "empty", "random.pt"]
    assert (EXECUTABLES / "export_model").exists()
