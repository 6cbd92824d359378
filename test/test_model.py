"""The model builder: the VOC SSD300 default boxes, both architectures, and torchvision's COCO models."""

from __future__ import annotations

import hashlib
import http.server
import math
import threading
from pathlib import Path

import pytest
import torch
from conftest import plant_coco_weights, save_named_by_hash, torchvision_coco_model
from torchvision.models.detection.ssd import SSD, SSD300_VGG16_Weights, ssd300_vgg16
from torchvision.models.detection.ssdlite import SSDLite320_MobileNet_V3_Large_Weights
from torchvision.models.mobilenetv3 import MobileNet_V3_Large_Weights, mobilenet_v3_large

from ssd_ros.vision import model as model_lib
from ssd_ros.vision.checkpoint import load_coco_pretrained
from ssd_ros.vision.model import (
    ARCHITECTURES,
    VOC_CLASSES,
    WeightsUnavailableError,
    build_coco_model,
    build_model,
    cached_weights_path,
    coco_class_names,
    coco_label_map,
    coco_weights,
    default_box_config,
)
from ssd_ros.vision.model_card import coco_model_card

LITE = "ssdlite320_mobilenet_v3"


def num_default_boxes(architecture: str) -> int:
    """Total default boxes per image (8732 for the VOC SSD300), counted from a built model's feature maps."""
    model = model_lib.build_model(architecture, 2)
    model.eval()
    h, w = model_lib.input_size(architecture)
    with torch.inference_mode():
        features = model.backbone(torch.zeros(1, 3, h, w))
    per_location = model.anchor_generator.num_anchors_per_location()
    return sum(f.shape[-2] * f.shape[-1] * n for f, n in zip(features.values(), per_location))


@pytest.fixture(scope="module")
def vgg_model() -> SSD:
    torch.manual_seed(0)
    return build_model("ssd300_vgg16", len(VOC_CLASSES) + 1)


@pytest.fixture(scope="module")
def vgg_anchors(vgg_model):
    """Feature maps and the default boxes (xyxy pixels) of one 300x300 image."""
    from torchvision.models.detection.image_list import ImageList

    with torch.inference_mode():
        features = list(vgg_model.backbone(torch.zeros(1, 3, 300, 300)).values())
        anchors = vgg_model.anchor_generator(ImageList(torch.zeros(1, 3, 300, 300), [(300, 300)]), features)[0]
    return features, anchors


def test_voc_classes():
    assert len(VOC_CLASSES) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[14] == "person" and VOC_CLASSES[-1] == "tvmonitor"
    assert list(VOC_CLASSES) == sorted(VOC_CLASSES)


def test_ssd300_has_8732_default_boxes_on_the_paper_feature_maps(vgg_model, vgg_anchors):
    features, anchors = vgg_anchors
    assert [tuple(f.shape[-2:]) for f in features] == [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]
    assert [f.shape[1] for f in features] == [512, 1024, 512, 256, 256, 256]
    assert vgg_model.anchor_generator.num_anchors_per_location() == [4, 6, 6, 6, 4, 4]
    assert anchors.shape == (8732, 4)
    assert num_default_boxes("ssd300_vgg16") == 8732
    # The head predicts one box and one score vector per default box.
    with torch.inference_mode():
        out = vgg_model.head(features)
    assert out["bbox_regression"].shape == (1, 8732, 4)
    assert out["cls_logits"].shape == (1, 8732, 21)


def test_ssd300_default_box_sizes_are_the_voc_ones(vgg_anchors):
    _, anchors = vgg_anchors
    wh = anchors[:, 2:] - anchors[:, :2]
    centres = (anchors[:, 2:] + anchors[:, :2]) / 2
    # First location of conv4_3 (38x38, step 8): centre (4, 4); boxes of scale 0.1 (30 px),
    # sqrt(0.1 * 0.2) (sqrt(30 * 60) px) and aspect ratio 2 / 1/2 at scale 0.1.
    first = wh[:4]
    expected = torch.tensor(
        [
            [30.0, 30.0],
            [math.sqrt(30 * 60), math.sqrt(30 * 60)],
            [30 * math.sqrt(2), 30 / math.sqrt(2)],
            [30 / math.sqrt(2), 30 * math.sqrt(2)],
        ]
    )
    torch.testing.assert_close(first, expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(centres[:4], torch.full((4, 2), 4.0), atol=1e-4, rtol=0)
    # Second location: one step (8 px) to the right.
    torch.testing.assert_close(centres[4], torch.tensor([12.0, 4.0]), atol=1e-4, rtol=0)
    # Each map's aspect-ratio-1 box has side s_k * 300 (clipped to the image for the largest).
    starts = [0]
    for cells, per_location in zip([38 * 38, 19 * 19, 10 * 10, 5 * 5, 3 * 3, 1], [4, 6, 6, 6, 4, 4]):
        starts.append(starts[-1] + cells * per_location)
    scales = [0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05]
    for k, start in enumerate(starts[:-1]):
        assert wh[start, 0].item() == pytest.approx(min(scales[k], 1.0) * 300, abs=1e-3)
        assert wh[start + 1, 0].item() == pytest.approx(min(math.sqrt(scales[k] * scales[k + 1]), 1.0) * 300, abs=1e-3)
    # conv7 (19x19, step 16) has aspect ratios 2 and 3: the 6th box is 1/3 at scale 0.2.
    b = starts[1] + 5
    assert wh[b].tolist() == pytest.approx([60 / math.sqrt(3), 60 * math.sqrt(3)], abs=1e-3)
    # The 1x1 map's box is centred on the image.
    assert centres[-1].tolist() == pytest.approx([150.0, 150.0], abs=1e-4)


def test_default_box_config_is_plain_and_fresh():
    config = default_box_config("ssd300_vgg16")
    assert config == {
        "aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        "scales": [0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05],
        "steps": [8, 16, 32, 64, 100, 300],
        "clip": True,
    }
    config["scales"][0] = 99.0  # a copy: mutating it does not change the architecture
    assert default_box_config("ssd300_vgg16")["scales"][0] == 0.1
    lite = default_box_config("ssdlite320_mobilenet_v3")
    assert lite["aspect_ratios"] == [[2, 3]] * 6 and lite["steps"] is None and len(lite["scales"]) == 7


def test_ssd300_matches_torchvision_structure_except_the_anchors(vgg_model):
    """Same layers and normalisation as torchvision's ssd300_vgg16 (so its weights load), VOC anchors."""
    reference = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21)
    ours = {k: tuple(v.shape) for k, v in vgg_model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert vgg_model.transform.image_mean == reference.transform.image_mean == [0.48235, 0.45882, 0.40784]
    assert vgg_model.transform.image_std == reference.transform.image_std
    assert vgg_model.transform.fixed_size == (300, 300)
    assert vgg_model.anchor_generator.scales == [0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05]
    assert reference.anchor_generator.scales != vgg_model.anchor_generator.scales
    # conv4_3 feature L2-normalised and rescaled by a learned per-channel weight initialised to 20.
    assert torch.equal(vgg_model.backbone.scale_weight.detach(), torch.full((512,), 20.0))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_build_each_architecture_runs_on_any_image_size(architecture):
    torch.manual_seed(0)
    model = build_model(architecture, 4)
    assert isinstance(model, SSD) and not model.training
    h, w = model_lib.input_size(architecture)
    assert model.transform.fixed_size == (w, h)
    mean, std = model_lib.normalization(architecture)
    assert model.transform.image_mean == mean and model.transform.image_std == std
    with torch.inference_mode():
        out = model([torch.rand(3, 240, 320), torch.rand(3, 100, 60)])
    assert len(out) == 2
    for det, (ih, iw) in zip(out, [(240, 320), (100, 60)]):
        assert det["boxes"].shape[1] == 4
        assert det["labels"].min() >= 1 and det["labels"].max() <= 3
        assert (det["boxes"][:, 0] >= 0).all() and (det["boxes"][:, 2] <= iw + 1e-3).all()
        assert (det["boxes"][:, 1] >= 0).all() and (det["boxes"][:, 3] <= ih + 1e-3).all()


def test_ssdlite_structure_does_not_depend_on_pretrained_backbone():
    """torchvision reduces the MobileNet tail without backbone weights; we do only when asked (the COCO weights)."""
    model = build_model("ssdlite320_mobilenet_v3", 21)
    # The unreduced MobileNetV3-Large ends with 960 channels (reduced: 480).
    assert model.backbone.features[1][-1].out_channels == 960
    # The feature channels the head was built for are the ones the backbone produces.
    from torchvision.models.detection._utils import retrieve_out_channels

    assert retrieve_out_channels(model.backbone, (320, 320)) == model.backbone.out_channels
    assert num_default_boxes("ssdlite320_mobilenet_v3") == 3234
    reduced = build_model("ssdlite320_mobilenet_v3", 21, reduced_tail=True)
    assert reduced.backbone.features[1][-1].out_channels == 480
    assert retrieve_out_channels(reduced.backbone, (320, 320)) == reduced.backbone.out_channels
    with pytest.raises(ValueError, match="reduced_tail is a MobileNetV3 option; ssd300_vgg16 has no such backbone"):
        build_model("ssd300_vgg16", 21, reduced_tail=True)
    with pytest.raises(ValueError, match="reduced_tail excludes pretrained_backbone"):
        build_model("ssdlite320_mobilenet_v3", 21, reduced_tail=True, pretrained_backbone=True)


def test_build_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown architecture 'yolo'"):
        build_model("yolo", 21)
    with pytest.raises(ValueError, match="background"):
        build_model("ssd300_vgg16", 1)
    bad = default_box_config("ssd300_vgg16")
    bad["scales"] = bad["scales"][:-1]
    with pytest.raises(ValueError, match="7 scales"):
        build_model("ssd300_vgg16", 21, default_boxes=bad)
    lite = default_box_config("ssdlite320_mobilenet_v3")
    lite["aspect_ratios"] = [[2]] * 6
    with pytest.raises(ValueError, match="aspect ratios"):
        build_model("ssdlite320_mobilenet_v3", 21, default_boxes=lite)


def test_coco_class_names_drop_background_and_na():
    categories = SSD300_VGG16_Weights.COCO_V1.meta["categories"]
    assert len(categories) == 91  # torchvision's list, with the "N/A" holes of the COCO ids
    names = coco_class_names()
    assert len(names) == 80 and len(set(names)) == 80
    assert "__background__" not in names and "N/A" not in names
    assert names[0] == "person" and names[-1] == "toothbrush"
    label_map = coco_label_map()
    assert len(label_map) == 91
    assert label_map[0] == -1
    assert sum(1 for v in label_map if v == -1) == 11  # background + 10 N/A
    for label, index in enumerate(label_map):
        if index >= 0:
            assert names[index] == categories[label]
        else:
            assert categories[label] in ("__background__", "N/A")
    assert names[label_map[categories.index("stop sign")]] == "stop sign"
    assert sorted(v for v in label_map if v >= 0) == list(range(80))


@pytest.mark.parametrize(
    ("architecture", "published"),
    [("ssd300_vgg16", "ssd300_vgg16_coco-b556d3b4.pth"), (LITE, "ssdlite320_mobilenet_v3_large_coco-a79551df.pth")],
)
def test_coco_model_offline_raises_a_clear_error(torch_hub_cache, monkeypatch, architecture, published):
    """No internet here: the download must fail fast with an error that says what to download and where to put it."""
    weights = coco_weights(architecture)
    assert weights.url == f"https://download.pytorch.org/models/{published}"  # torchvision's published file
    # Never wait on DNS/a network: an unroutable local port refuses at once, like an offline robot.
    monkeypatch.setattr(weights.value, "url", f"http://127.0.0.1:9/{published}")
    with pytest.raises(WeightsUnavailableError) as info:
        build_coco_model(architecture)
    message = str(info.value)
    assert "could not download" in message and "Connection refused" in message
    assert f"from http://127.0.0.1:9/{published}" in message  # what to download
    assert f"copy {published} into {torch_hub_cache}" in message  # where to put the file by hand
    assert f"export_model --coco {architecture}" in message and "\n" not in message
    assert isinstance(info.value, RuntimeError)
    assert not list(torch_hub_cache.parent.rglob("*.pth*"))  # nothing half-downloaded left in the cache


def test_both_coco_weights_share_the_category_list():
    ssd300, ssdlite = SSD300_VGG16_Weights.COCO_V1, SSDLite320_MobileNet_V3_Large_Weights.COCO_V1
    assert coco_weights("ssd300_vgg16") is ssd300 and coco_weights(LITE) is ssdlite
    assert ssdlite.meta["categories"] == ssd300.meta["categories"]
    with pytest.raises(ValueError, match="unknown architecture 'ssdlite'"):
        coco_weights("ssdlite")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_coco_card_builds_torchvisions_own_structure(architecture):
    """The card's model is what torchvision's builder makes for the COCO weights: layers, anchors, transform."""
    reference = torchvision_coco_model(architecture)
    card = coco_model_card(architecture)
    ours = card.build_model()
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in reference.state_dict().items()
    }
    for name in ("scales", "aspect_ratios", "steps", "clip"):
        assert getattr(ours.anchor_generator, name) == getattr(reference.anchor_generator, name), name
    for name in ("image_mean", "image_std", "min_size", "max_size", "fixed_size"):
        assert getattr(ours.transform, name) == getattr(reference.transform, name), name
    for name in ("score_thresh", "nms_thresh", "detections_per_img", "topk_candidates"):
        assert getattr(ours, name) == getattr(reference, name), name
    assert card.reduced_tail == (architecture == LITE)
    assert card.training["source"] == coco_weights(architecture).url


def test_coco_ssdlite_loads_the_cached_weights_without_touching_the_rng(torch_hub_cache, monkeypatch):
    reference = torchvision_coco_model(LITE, seed=3)
    planted = plant_coco_weights(monkeypatch, LITE, reference.state_dict())
    torch.manual_seed(7)
    before = torch.get_rng_state()
    model = build_coco_model(LITE)
    assert torch.equal(torch.get_rng_state(), before)
    assert not model.training and planted.parent == torch_hub_cache
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items())
    # The reduced tail: MobileNetV3's last stage is 480 channels wide in the COCO weights (960 in ImageNet's).
    assert model.backbone.features[1][-1].out_channels == 480


def test_coco_file_with_another_hash_is_refused(torch_hub_cache):
    """Bytes under the published name that are not the published file: refused by the sha256, named, with the fix."""
    weights = coco_weights(LITE)
    path = cached_weights_path(weights)
    assert path.parent == torch_hub_cache
    path.parent.mkdir(parents=True)
    torch.save(torchvision_coco_model(LITE).state_dict(), path)  # the right shapes, other values
    with pytest.raises(WeightsUnavailableError) as info:
        build_coco_model(LITE)
    message = str(info.value)
    assert f"the cached torchvision COCO SSDlite320 weights {path} are not the published file" in message
    assert "expected a79551df" in message and f"delete it, it is downloaded again from {weights.url}" in message


def test_coco_file_of_the_other_architecture_is_refused(torch_hub_cache, monkeypatch):
    """The SSD300 file under the SSDlite name (its hash matching the name): refused by its shapes, not loaded."""
    planted = plant_coco_weights(monkeypatch, LITE, torchvision_coco_model("ssd300_vgg16").state_dict())
    with pytest.raises(WeightsUnavailableError) as info:
        load_coco_pretrained(LITE)
    message = str(info.value)
    assert f"the cached torchvision COCO SSDlite320 weights {planted} do not fit" in message
    assert "tensors missing" in message and "delete it, it is downloaded again" in message and "\n" not in message
    # A file holding something other than a state dict (a list of tensors) is named the same way.
    plant_coco_weights(monkeypatch, LITE, [torch.zeros(3)])
    with pytest.raises(WeightsUnavailableError, match="do not fit .*holds a list, not a dict of tensors"):
        load_coco_pretrained(LITE)


def test_coco_model_rejects_an_unknown_architecture(torch_hub_cache):
    with pytest.raises(ValueError, match="unknown architecture 'ssdlite320'"):
        load_coco_pretrained("ssdlite320")
    assert not torch_hub_cache.exists()  # refused before anything was looked up or downloaded


class Payload:
    """Pickles to a call that creates ``marker``: what a malicious weight file would run when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_payload_planted_in_the_cache_never_runs(tmp_path, torch_hub_cache):
    """A file dropped into torch's cache under the COCO weights' name is refused by its hash, not unpickled."""
    marker = tmp_path / "payload_ran"
    torch.save(Payload(marker), tmp_path / "payload.pth")
    torch.load(tmp_path / "payload.pth", weights_only=False)  # the payload works when code may run ...
    assert marker.exists()
    marker.unlink()
    planted = torch_hub_cache / "ssd300_vgg16_coco-b556d3b4.pth"
    planted.parent.mkdir(parents=True)
    planted.write_bytes((tmp_path / "payload.pth").read_bytes())
    with pytest.raises(WeightsUnavailableError, match="not the published file .*expected b556d3b4") as info:
        build_coco_model()
    assert not marker.exists(), "... and never ran here"
    assert str(planted) in str(info.value) and "delete it" in str(info.value)


def test_payload_with_a_matching_hash_prefix_is_refused_by_weights_only(tmp_path, torch_hub_cache, monkeypatch):
    """An 8-hex-digit prefix is cheap to forge: even a file that passes the hash check must not run code."""
    marker = tmp_path / "payload_ran"
    forged = save_named_by_hash(Payload(marker), torch_hub_cache, "ssd300_vgg16_coco")
    monkeypatch.setattr(SSD300_VGG16_Weights.COCO_V1.value, "url", f"http://127.0.0.1:9/{forged.name}")
    with pytest.raises(WeightsUnavailableError, match="not a plain weight file") as info:
        build_coco_model()
    assert not marker.exists()
    assert "weights_only" in str(info.value)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut off"], ids=["empty", "truncated-zip"])
def test_damaged_file_with_a_matching_hash_prefix_is_refused(torch_hub_cache, monkeypatch, content):
    """A damaged file that still passes the hash check (EOFError, RuntimeError from torch.load) is refused too."""
    name = f"ssd300_vgg16_coco-{hashlib.sha256(content).hexdigest()[:8]}.pth"
    torch_hub_cache.mkdir(parents=True)
    (torch_hub_cache / name).write_bytes(content)
    monkeypatch.setattr(SSD300_VGG16_Weights.COCO_V1.value, "url", f"http://127.0.0.1:9/{name}")
    with pytest.raises(WeightsUnavailableError, match="not a plain weight file"):
        build_coco_model()


def test_download_cut_off_mid_file_is_a_clear_error(torch_hub_cache, monkeypatch):
    """A server that hangs up in the middle of a chunk: urllib raises http.client.IncompleteRead (no OSError)."""

    class CutOff(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # chunked transfer encoding

        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"3e8\r\n" + b"x" * 10)  # a 1000-byte chunk, cut off after 10
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), CutOff)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/ssd300_vgg16_coco-b556d3b4.pth"
    monkeypatch.setattr(SSD300_VGG16_Weights.COCO_V1.value, "url", url)
    try:
        with pytest.raises(WeightsUnavailableError, match="could not download .*IncompleteRead") as info:
            build_coco_model()
    finally:
        thread.join(10)
        server.server_close()
    assert "ssd300_vgg16_coco-b556d3b4.pth" in str(info.value) and str(torch_hub_cache) in str(info.value)
    assert not any(torch_hub_cache.iterdir()), "nothing half-downloaded left in the cache"


def test_pretrained_backbone_is_downloaded_hash_checked_and_cached(tmp_path, torch_hub_cache, monkeypatch):
    """The real loading path, served from a file:// URL: right weights in, wrong bytes refused, cache reused."""
    torch.manual_seed(1)
    reference = build_model("ssdlite320_mobilenet_v3", 3)
    # A MobileNetV3-Large state dict with torchvision's key layout and values no init would produce.
    mobilenet = mobilenet_v3_large(weights=None, reduced_tail=False)
    for tensor in mobilenet.state_dict().values():
        if tensor.is_floating_point():
            tensor.uniform_(-0.1, 0.1)
    served = save_named_by_hash(mobilenet.state_dict(), tmp_path / "server", "mobilenet_v3_large")
    weights = MobileNet_V3_Large_Weights.IMAGENET1K_V1

    # Bytes that do not match the name's hash are refused and leave nothing in the cache.
    wrong = served.with_name("mobilenet_v3_large-00000000.pth")
    wrong.write_bytes(served.read_bytes())
    monkeypatch.setattr(weights.value, "url", wrong.as_uri())
    with pytest.raises(WeightsUnavailableError, match="could not download .*invalid hash value"):
        build_model("ssdlite320_mobilenet_v3", 3, pretrained_backbone=True)
    assert not any(torch_hub_cache.iterdir())

    monkeypatch.setattr(weights.value, "url", served.as_uri())
    model = build_model("ssdlite320_mobilenet_v3", 3, pretrained_backbone=True)
    first_conv = mobilenet.features[0][0].weight
    assert torch.equal(model.backbone.features[0][0][0].weight, first_conv)
    assert not torch.equal(reference.backbone.features[0][0][0].weight, first_conv)
    assert (torch_hub_cache / served.name).read_bytes() == served.read_bytes()
    served.unlink()  # the second build uses the verified cache
    again = build_model("ssdlite320_mobilenet_v3", 3, pretrained_backbone=True)
    assert torch.equal(again.backbone.features[0][0][0].weight, first_conv)
