"""``export_model --coco ARCH``: torchvision's COCO models to ONNX / OpenVINO, fp32 and int8, and its refusals.

No internet here: the COCO weights are random weights of the published files' shapes, planted in a torch hub
cache of the test's own under a hash-checked name (``plant_coco_weights``), so the real loading path runs.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import assert_same_detections, plant_coco_weights, shared_data, torchvision_coco_model

from ssd_ros.tools import export_model
from ssd_ros.vision.detector import Detector
from ssd_ros.vision.export import read_exported
from ssd_ros.vision.image_codec import read_image_file
from ssd_ros.vision.model import cached_weights_path, coco_class_names, coco_weights
from ssd_ros.vision.model_card import coco_model_card

LITE = "ssdlite320_mobilenet_v3"
# Random weights score hundreds of boxes near 1: a high threshold and no top-N cut keep the comparison to
# boxes that are clearly in (a box at the threshold could fall either side in two runtimes).
SETTINGS = {"score_threshold": 0.9, "max_detections": 3000, "device": "cpu", "warmup_runs": 0}


@pytest.fixture(scope="module")
def weights() -> dict:
    """State dicts of torchvision's own COCO structures (built once: the SSD300 builder takes seconds)."""
    return {architecture: torchvision_coco_model(architecture).state_dict() for architecture in ("ssd300_vgg16", LITE)}


@pytest.fixture(scope="module")
def images() -> list:
    voc = shared_data("voc2012_sample", "VOC2012", "JPEGImages")
    rover = shared_data("picar_camera", "detection", "test")
    return [read_image_file(voc / "2007_000027.jpg"), read_image_file(sorted(rover.glob("*.jpg"))[0])]


def _export(*argv: str) -> int:
    return export_model.main([*argv, "--quiet"])


@pytest.mark.parametrize(
    ("architecture", "export_format", "backend"),
    [("ssd300_vgg16", "onnx", "onnxruntime"), (LITE, "onnx", "onnxruntime"), (LITE, "openvino", "openvino")],
)
def test_coco_export_gives_the_torch_models_detections(
    torch_hub_cache, monkeypatch, tmp_path, weights, images, architecture, export_format, backend
):
    plant_coco_weights(monkeypatch, architecture, weights[architecture])
    out = tmp_path / ("coco.onnx" if export_format == "onnx" else "coco.xml")
    assert _export("--coco", architecture, "--format", export_format, "--out", str(out)) == 0
    exported = read_exported(out)
    assert exported.card == coco_model_card(architecture) and exported.precision == "fp32"
    assert export_model.int8_report(exported) == []  # no int8 measurement to report
    fast = Detector.from_checkpoint(out, backend=backend, **SETTINGS)
    reference = Detector.from_coco(architecture, backend="torch", **SETTINGS)
    assert fast.class_names == coco_class_names() and fast.backend == backend
    # from_coco on the fast backend (exported in memory) is the same network (SSDlite: cheap to export twice).
    in_memory = Detector.from_coco(architecture, backend=backend, **SETTINGS) if architecture == LITE else fast
    assert in_memory.backend == backend
    for image in images:
        expected = reference(image)
        assert len(expected) >= 20, "the test needs detections to compare"
        assert_same_detections(expected, fast(image), box_px=0.5, score=1e-3)
        assert_same_detections(expected, in_memory(image), box_px=0.5, score=1e-3)
    # The follower's target class is a COCO name of the exported file's card.
    fast.class_filter = ["person"]
    people = fast(images[0])
    assert len(people) > 0 and set(people.names) == {"person"}


# The int8 path is what is tested here; whether int8 pays off for SSDlite on this CPU is test_cpu's.
@pytest.mark.filterwarnings("ignore:int8 does not pay off here")
def test_coco_ssdlite_int8_export_calibrated_on_frames(torch_hub_cache, monkeypatch, tmp_path, weights, images):
    plant_coco_weights(monkeypatch, LITE, weights[LITE])
    frames = shared_data("picar_camera", "detection", "train")
    calibration = tmp_path / "frames"
    calibration.mkdir()
    for frame in sorted(frames.glob("*.jpg"))[:8]:
        (calibration / frame.name).write_bytes(frame.read_bytes())
    out = tmp_path / "coco_ssdlite_int8.xml"
    argv = ["--coco", LITE, "--format", "openvino", "--int8", "--calibration", str(calibration)]
    assert _export(*argv, "--out", str(out)) == 0
    exported = read_exported(out)
    assert exported.precision == "int8" and exported.card == coco_model_card(LITE)
    detector = Detector.from_checkpoint(out, backend="openvino", precision="int8", class_filter=["person"], **SETTINGS)
    assert detector.precision == "int8" and detector.class_names == coco_class_names()
    # Random weights say nothing about int8's accuracy (test_backends measures it on a trained model); this is
    # the path: the int8 file runs and reports COCO names.
    people = detector(images[0])
    assert len(people) > 0 and set(people.names) == {"person"}


def test_coco_alone_means_ssd300():
    assert export_model.parse_args(["--coco", "--out", "a.onnx"]).coco == "ssd300_vgg16"
    assert export_model.parse_args(["--out", "a.onnx", "--coco"]).coco == "ssd300_vgg16"
    assert export_model.parse_args(["--coco", LITE, "--out", "a.onnx"]).coco == LITE
    assert export_model.parse_args(["--coco", "--format", "openvino", "--out", "a.xml"]).format == "openvino"


def test_format_follows_the_output_name_unless_given(capsys):
    assert export_model.parse_args(["--coco", LITE, "--out", "coco.xml"]).format == "openvino"
    assert export_model.parse_args(["--coco", LITE, "--out", "coco.onnx"]).format == "onnx"
    with pytest.raises(SystemExit) as info:
        export_model.parse_args(["--coco", LITE, "--out", "coco.pt"])
    assert info.value.code == 2
    assert "--out coco.pt: name a .onnx or .xml (OpenVINO) file, or give --format" in capsys.readouterr().err


def test_coco_typo_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        export_model.parse_args(["--coco", "ssdlite", "--out", "a.onnx"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --coco: invalid choice: 'ssdlite' (choose from 'ssd300_vgg16', 'ssdlite320_mobilenet_v3')" in err


def test_coco_export_refuses_bad_weight_files_with_one_line(torch_hub_cache, monkeypatch, tmp_path, weights, capsys):
    published = cached_weights_path(coco_weights(LITE))
    out = tmp_path / "coco.onnx"
    argv = ["--coco", LITE, "--out", str(out)]

    def refused() -> str:
        assert _export(*argv) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith("export_model: error: "), err
        assert not out.exists() and not list(tmp_path.glob(".coco.onnx*")), "nothing written"
        return err

    # Offline, nothing cached: what to download, where to put it, and the other way.
    monkeypatch.setattr(coco_weights(LITE).value, "url", f"http://127.0.0.1:9/{published.name}")
    err = refused()
    assert f"could not download the torchvision COCO SSDlite320 weights from http://127.0.0.1:9/{published.name}" in err
    assert f"copy {published.name} into {torch_hub_cache}" in err and f"export_model --coco {LITE}" in err

    # Another file under the published name: refused by its sha256, before it is unpickled.
    published.parent.mkdir(parents=True, exist_ok=True)
    published.write_bytes(b"not the published weights")
    err = refused()
    assert f"the cached torchvision COCO SSDlite320 weights {published} are not the published file" in err
    assert "delete it, it is downloaded again" in err
    published.unlink()

    # The SSD300 file under the SSDlite name (with a hash that matches the name): refused by its shapes.
    planted = plant_coco_weights(monkeypatch, LITE, weights["ssd300_vgg16"])
    err = refused()
    assert f"the cached torchvision COCO SSDlite320 weights {planted} do not fit torchvision's COCO {LITE}" in err


def test_calibration_frames_spread_over_the_whole_drive(tmp_path):
    frame = np.zeros((8, 8, 3), np.uint8)
    for i in range(500):  # a drive's frames, sorted in time by name
        cv2.imwrite(str(tmp_path / f"f{i:03d}.png"), frame)
    chosen = [int(p.stem[1:]) for p in export_model._calibration_images(tmp_path, 300)]
    assert len(chosen) == len(set(chosen)) == 300
    assert chosen[0] == 0 and chosen[-1] >= 498  # the drive's end too, not its first 300 frames
    assert max(np.diff(chosen)) <= 2
    assert len(export_model._calibration_images(tmp_path, 1000)) == 500
