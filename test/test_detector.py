"""The Detector (parity with torchvision's forward, parameters, batches) and drawing.

Models are weights=None builds saved and loaded through the real checkpoint path. An untrained
SSD300 already gives a wide spread of scores on real images; the untrained SSDlite's features vanish
(torchvision's std-0.03 init), so its convolutions are re-initialised to give it something to say.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import (
    assert_same_detections,
    lively_ssdlite,
    make_checkpoint,
    plant_coco_weights,
    torchvision_coco_model,
)
from torch import nn
from torchvision.models.detection.ssd import SSD300_VGG16_Weights
from torchvision.transforms.functional import to_tensor

from ssd_ros.vision.checkpoint import CheckpointError, load_checkpoint
from ssd_ros.vision.detections import Detections
from ssd_ros.vision.detector import Detector, resolve_device
from ssd_ros.vision.drawing import class_color, draw_detections
from ssd_ros.vision.model import (
    ARCHITECTURES,
    VOC_CLASSES,
    WeightsUnavailableError,
    cached_weights_path,
    coco_class_names,
    coco_label_map,
    coco_weights,
)
from ssd_ros.vision.model_card import coco_model_card

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VOC_IMAGE = DATA / "voc2012_sample" / "VOC2012" / "JPEGImages" / "2007_000027.jpg"  # 486x500
LITE = "ssdlite320_mobilenet_v3"
PICAR_IMAGE = DATA / "picar_camera" / "detection" / "test" / "2019-04-16-095558.jpg"  # 640x480


def _read_rgb(path: Path) -> np.ndarray:
    if not path.exists():
        pytest.skip(f"test data {path} is absent (it lives in ../shared/data next to the project)")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def voc_image() -> np.ndarray:
    return _read_rgb(VOC_IMAGE)


@pytest.fixture(scope="module")
def camera_image() -> np.ndarray:
    image = _read_rgb(PICAR_IMAGE)
    assert image.shape == (480, 640, 3)
    return image


@pytest.fixture(scope="module")
def vgg_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("det") / "vgg.pt", architecture="ssd300_vgg16")


def _with_reference(detector: Detector, model: nn.Module) -> Detector:
    """``detector`` carrying the torchvision model it is compared with (a separate instance, same weights)."""
    detector.torchvision_model = model.to(detector.device).eval()
    return detector


@pytest.fixture(scope="module")
def vgg(vgg_checkpoint) -> Detector:
    return _with_reference(Detector.from_checkpoint(vgg_checkpoint, device="cpu"), load_checkpoint(vgg_checkpoint)[0])


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> Detector:
    path = make_checkpoint(tmp_path_factory.mktemp("det") / "lite.pt", model=lively_ssdlite())
    return _with_reference(Detector.from_checkpoint(path, device="cpu", warmup_runs=0), load_checkpoint(path)[0])


def _torchvision_forward(detector: Detector, rgb: np.ndarray) -> dict[str, torch.Tensor]:
    """The reference: torchvision's own forward of the same model on the same image."""
    model = detector.torchvision_model
    model.score_thresh = detector.score_threshold
    model.nms_thresh = detector.nms_iou
    model.detections_per_img = detector.max_detections
    with torch.inference_mode():
        return model([to_tensor(rgb).to(detector.device)])[0]


def _assert_parity(detector: Detector, rgb: np.ndarray, minimum: int = 5) -> Detections:
    reference = _torchvision_forward(detector, rgb)
    ours = detector(rgb)
    assert len(ours) >= minimum, "the test needs detections to compare"
    assert len(ours) == len(reference["scores"])
    np.testing.assert_allclose(ours.boxes, reference["boxes"].cpu().numpy(), atol=1.0, rtol=0)
    np.testing.assert_allclose(ours.scores, reference["scores"].cpu().numpy(), atol=1e-3, rtol=0)
    np.testing.assert_array_equal(ours.labels, reference["labels"].cpu().numpy() - 1)  # background excluded
    return ours


def _assert_valid(detections: Detections, rgb: np.ndarray, names=VOC_CLASSES) -> None:
    height, width = rgb.shape[:2]
    assert detections.boxes.dtype == np.float32 and detections.scores.dtype == np.float32
    assert detections.labels.dtype == np.int64 and detections.class_names == tuple(names)
    boxes = detections.boxes
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert ((detections.scores >= 0) & (detections.scores <= 1)).all()
    assert ((detections.labels >= 0) & (detections.labels < len(names))).all()
    assert (np.diff(detections.scores) <= 0).all()  # best first


def test_parity_with_torchvision_forward_on_a_voc_image(vgg, voc_image):
    vgg.score_threshold, vgg.nms_iou, vgg.max_detections = 0.3, 0.45, 100
    ours = _assert_parity(vgg, voc_image, minimum=50)
    _assert_valid(ours, voc_image)
    # Boxes are in the original image's pixels, not the 300x300 network input.
    assert ours.boxes[:, 2].max() > 300 or ours.boxes[:, 3].max() > 300


def test_parity_on_a_640x480_camera_frame_with_other_parameters(vgg, camera_image):
    vgg.score_threshold, vgg.nms_iou, vgg.max_detections = 0.5, 0.3, 37
    try:
        ours = _assert_parity(vgg, camera_image, minimum=37)
        _assert_valid(ours, camera_image)
        assert ours.boxes[:, 2].max() > 300  # x reaches into the 640-wide frame
    finally:
        vgg.score_threshold, vgg.nms_iou, vgg.max_detections = 0.3, 0.45, 100


def test_parity_ssdlite(lite, voc_image):
    _assert_valid(_assert_parity(lite, voc_image, minimum=50), voc_image)


def test_batch_equals_single(lite, voc_image, camera_image):
    small = np.ascontiguousarray(voc_image[50:250, 100:400])  # a third size, and a view made contiguous
    images = [voc_image, camera_image, small]
    batch = lite.detect_batch(images)
    assert len(batch) == 3
    for image, batched in zip(images, batch):
        single = lite(image)
        _assert_valid(batched, image)
        assert len(batched) == len(single) > 0
        np.testing.assert_allclose(batched.boxes, single.boxes, atol=1e-2)
        np.testing.assert_allclose(batched.scores, single.scores, atol=1e-4)
        np.testing.assert_array_equal(batched.labels, single.labels)
    assert lite.detect_batch([]) == []


def test_non_contiguous_and_odd_sized_input(lite, voc_image):
    view = voc_image[::-1, ::2]  # negative and non-unit strides
    detections = lite(view)
    _assert_valid(detections, view)
    _assert_valid(lite(voc_image[:1, :1].copy()), voc_image[:1, :1])


def test_thresholds_are_applied_per_call(lite, voc_image):
    try:
        lite.score_threshold, lite.max_detections = 0.3, 1000
        low = lite(voc_image)
        lite.score_threshold = 0.8
        high = lite(voc_image)
        assert 0 < len(high) < len(low) and (high.scores > 0.8).all()
        lite.max_detections = 5
        assert len(lite(voc_image)) == 5
        lite.score_threshold, lite.max_detections, lite.nms_iou = 0.3, 1000, 0.1
        assert len(lite(voc_image)) < len(low)  # stricter NMS suppresses more
    finally:
        lite.score_threshold, lite.nms_iou, lite.max_detections = 0.3, 0.45, 100


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("score_threshold", 1.5),
        ("score_threshold", -0.1),
        ("score_threshold", float("nan")),
        ("score_threshold", "high"),
        ("nms_iou", 2.0),
        ("max_detections", 0),
        ("max_detections", 2.5),
        ("max_detections", True),
    ],
)
def test_invalid_parameters_are_rejected_with_a_reason(lite, name, value):
    before = getattr(lite, name)
    with pytest.raises(ValueError, match=name):
        setattr(lite, name, value)
    assert getattr(lite, name) == before


def test_class_filter(lite, voc_image):
    try:
        lite.max_detections = 100
        everything = lite(voc_image)
        wanted = ("person", "dog", "tvmonitor")
        lite.class_filter = list(wanted)
        filtered = lite(voc_image)
        assert len(filtered) > 0 and set(filtered.names) <= set(wanted)
        # Same as keeping those classes from an unlimited result, then the top max_detections.
        lite.class_filter, lite.max_detections = None, 10000
        unlimited = lite(voc_image)
        keep = np.isin(np.array(unlimited.names), wanted)
        np.testing.assert_allclose(filtered.scores, unlimited.scores[keep][:100], atol=1e-6)
        np.testing.assert_allclose(filtered.boxes, unlimited.boxes[keep][:100], atol=1e-4)
        assert len(everything) == 100
        with pytest.raises(ValueError, match=r"unknown class name\(s\) \['unicorn'\]"):
            lite.class_filter = ["person", "unicorn"]
        with pytest.raises(ValueError, match="not the string"):
            lite.class_filter = "person"
        lite.class_filter = []  # empty: no filter
        assert lite.class_filter is None
    finally:
        lite.class_filter, lite.max_detections = None, 100


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((48, 64, 3), np.float32), "must be uint8"),
        (np.zeros((48, 64), np.uint8), "3 dimensions"),
        (np.zeros((48, 64, 4), np.uint8), "3 channels"),
        (np.zeros((0, 64, 3), np.uint8), "empty"),
        ([[1, 2, 3]], "numpy array"),
    ],
)
def test_bad_images_raise_value_error(lite, image, message):
    with pytest.raises(ValueError, match=message):
        lite(image)


def test_label_map_drops_unused_outputs_and_reports_coco_names(voc_image):
    """The COCO wrapping: 91 outputs, 80 names; background and "N/A" ids never reach the caller."""
    model = lively_ssdlite(num_classes=91)
    names, label_map = coco_class_names(), coco_label_map()
    detector = Detector(model, names, label_map=label_map, device="cpu", warmup_runs=0, max_detections=300)
    _with_reference(detector, model)
    detections = detector(voc_image)
    _assert_valid(detections, voc_image, names)
    reference = _torchvision_forward(detector, voc_image)
    categories = SSD300_VGG16_Weights.COCO_V1.meta["categories"]
    expected = [categories[label] for label in reference["labels"].tolist() if categories[label] != "N/A"]
    # The reference's top 300 include N/A ids; ours fills those places with the next real classes.
    assert len(detections) == 300 and detections.names[: len(expected)] == expected
    assert "N/A" in [categories[label] for label in reference["labels"].tolist()]  # something was dropped


def test_constructor_checks(voc_image):
    model = lively_ssdlite(num_classes=4)
    with pytest.raises(ValueError, match="4 outputs .* 20 class names"):
        Detector(model, VOC_CLASSES, device="cpu", warmup_runs=0)
    with pytest.raises(ValueError, match="label_map"):
        Detector(model, ("a", "b", "c"), label_map=[0, 1], device="cpu", warmup_runs=0)
    detector = Detector(model, ("a", "b", "c"), device="cpu", class_filter=["b"])  # warm-up runs
    assert detector.class_filter == ("b",)
    assert "3 classes" in repr(detector)


def test_devices():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="unsupported device"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_parity_on_cuda(vgg_checkpoint, camera_image):
    detector = _with_reference(
        Detector.from_checkpoint(vgg_checkpoint, device="cuda"), load_checkpoint(vgg_checkpoint)[0]
    )
    assert detector.device.type == "cuda" and next(detector.network.network.parameters()).is_cuda
    assert detector._keep_outputs.is_cuda  # on the device once, with the default boxes:
    assert detector.network.spec.anchors_on(detector.device) is detector.network.spec.anchors_on(detector.device)
    _assert_valid(_assert_parity(detector, camera_image, minimum=20), camera_image)


def test_default_boxes_are_copied_to_a_device_once(vgg_checkpoint):
    """What a CUDA network's post-processing reads every frame, here on the meta device (no CUDA needed)."""
    spec = Detector.from_checkpoint(vgg_checkpoint, device="cpu", warmup_runs=0).network.spec
    assert spec.anchors_on(torch.device("cpu")) is spec.anchors
    meta = spec.anchors_on(torch.device("meta"))
    assert meta.device.type == "meta" and meta.shape == spec.anchors.shape
    assert spec.anchors_on(torch.device("meta")) is meta


def test_from_checkpoint_errors_and_expectations(vgg_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        Detector.from_checkpoint(tmp_path / "missing.pt", device="cpu")
    with pytest.raises(CheckpointError, match="architecture mismatch"):
        Detector.from_checkpoint(vgg_checkpoint, device="cpu", expect_architecture="ssdlite320_mobilenet_v3")


@pytest.mark.parametrize(("architecture", "name"), [("ssd300_vgg16", "SSD300"), (LITE, "SSDlite320")])
def test_from_coco_offline(torch_hub_cache, monkeypatch, architecture, name):
    weights = coco_weights(architecture)
    monkeypatch.setattr(weights.value, "url", f"http://127.0.0.1:9/{cached_weights_path(weights).name}")
    with pytest.raises(
        WeightsUnavailableError, match=f"could not download the torchvision COCO {name} weights .*Connection refused"
    ):
        Detector.from_coco(architecture, device="cpu")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_from_coco_equals_torchvisions_own_model(torch_hub_cache, monkeypatch, voc_image, architecture):
    """Same weights (planted in the cache) in torchvision's own builder's model: the same detections.

    torchvision's ssd300_vgg16 / ssdlite320_mobilenet_v3_large with their own anchors, normalisation and input
    size; its background and N/A outputs are what the card's label map drops, and nothing else differs.
    """
    reference = torchvision_coco_model(architecture)
    plant_coco_weights(monkeypatch, architecture, reference.state_dict())
    detector = Detector.from_coco(architecture, device="cpu", warmup_runs=0, score_threshold=0.5, max_detections=3000)
    assert detector.card == coco_model_card(architecture) and detector.backend == "torch"
    assert detector.class_names == coco_class_names() and len(detector.class_names) == 80
    ours = detector(voc_image)
    _with_reference(detector, reference)
    expected = _torchvision_forward(detector, voc_image)
    kept = torch.tensor(coco_label_map())[expected["labels"]] >= 0
    assert 50 <= len(ours) < detector.max_detections and (~kept).any()  # something to compare, N/A dropped
    assert len(ours) == int(kept.sum())
    labels = torch.tensor(coco_label_map())[expected["labels"][kept]]
    reference_detections = Detections(
        expected["boxes"][kept].numpy(), expected["scores"][kept].numpy(), labels.numpy(), coco_class_names()
    )
    # As sets: hundreds of random-weight scores near 1 tie to float rounding and may swap places.
    assert_same_detections(reference_detections, ours, box_px=1.0, score=1e-3)
    _assert_valid(ours, voc_image, coco_class_names())
    # The follower's target class: a class filter of the COCO name keeps exactly the person detections.
    detector.class_filter = ["person"]
    people = detector(voc_image)
    assert len(people) > 0 and set(people.names) == {"person"}
    assert len(people) == sum(1 for name in ours.names if name == "person")


def test_from_coco_backend_auto_is_torch(torch_hub_cache, monkeypatch):
    plant_coco_weights(monkeypatch, LITE, torchvision_coco_model(LITE).state_dict())
    detector = Detector.from_coco(LITE, backend="auto", device="cpu", warmup_runs=0)
    assert (detector.backend, detector.precision, detector.card.architecture) == ("torch", "fp32", LITE)


def test_from_coco_refuses_bad_choices_before_loading(torch_hub_cache):
    with pytest.raises(ValueError, match=f"int8 needs a calibrated int8 export: export_model --coco {LITE} --int8"):
        Detector.from_coco(LITE, backend="onnxruntime", precision="int8")
    with pytest.raises(ValueError, match="unknown architecture 'ssdlite'; expected one of ssd300_vgg16, ssdlite320"):
        Detector.from_coco("ssdlite")
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        Detector.from_coco(LITE, backend="tensorrt")
    assert not torch_hub_cache.exists()  # nothing looked up, nothing downloaded


def test_draw_detections(voc_image):
    detections = Detections(
        np.array([[10, 20, 200, 300], [150, 100, 480, 490], [-5, -5, 1000, 1000]], np.float32),
        np.array([0.9, 0.6, 0.4], np.float32),
        np.array([14, 11, 0], np.int64),
        VOC_CLASSES,
    )
    original = voc_image.copy()
    drawn = draw_detections(voc_image, detections)
    assert np.array_equal(voc_image, original)  # input untouched
    assert drawn.shape == voc_image.shape and drawn.dtype == np.uint8
    assert not np.array_equal(drawn, voc_image)
    # The box edge has the class colour; far from any box nothing changed.
    person = class_color("person")
    assert tuple(drawn[150, 10]) == person
    assert np.array_equal(drawn[400:410, 50:60], voc_image[400:410, 50:60])
    assert class_color("person") == person and class_color("dog") != person
    custom = draw_detections(voc_image, detections, colors={"person": (1, 2, 3)})
    assert tuple(custom[150, 10]) == (1, 2, 3)
    # Nothing to draw: an equal copy.
    empty = draw_detections(voc_image, Detections.empty(VOC_CLASSES))
    assert np.array_equal(empty, voc_image) and empty is not voc_image
    with pytest.raises(ValueError, match="image must be uint8"):
        draw_detections(voc_image.astype(np.float32), detections)
    # A tracked detection's label carries its id ("#42 person 0.90"); an empty id (not yet confirmed) draws none.
    box, score, label = np.array([[100, 150, 300, 400]], np.float32), np.array([0.9], np.float32), np.array([14])
    plain = draw_detections(voc_image, Detections(box, score, label, VOC_CLASSES))
    tracked = draw_detections(voc_image, Detections(box, score, label, VOC_CLASSES, track_ids=("42",)))
    unconfirmed = draw_detections(voc_image, Detections(box, score, label, VOC_CLASSES, track_ids=("",)))
    assert not np.array_equal(tracked, plain) and np.array_equal(unconfirmed, plain)
    assert np.array_equal(tracked[160:, :], plain[160:, :])  # only the label above the box differs
