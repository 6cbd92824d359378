"""SSD augmentation on real images: every box stays valid and inside the image, over many seeds."""

import pytest
import torch
from conftest import shared_data
from torchvision import tv_tensors

from ssd_ros.evaluation.voc import VocSplit, discover_classes
from ssd_ros.vision.model import VOC_CLASSES
from training.dataset import VocDetectionDataset
from training.presets import SSDEvalPreset, SSDTrainPreset

SEEDS = 60


def _check_sample(image, target, size):
    height, width = size
    assert image.shape == (3, height, width) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    boxes = target["boxes"].as_subclass(torch.Tensor)
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and torch.isfinite(boxes).all()
    assert len(boxes) == len(target["labels"]) == len(target["difficult"])
    assert (boxes[:, 2] - boxes[:, 0] >= 1).all() and (boxes[:, 3] - boxes[:, 1] >= 1).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    return boxes


@pytest.mark.parametrize(
    "data, size",
    [(("voc2012_sample",), (300, 300)), (("picar_camera", "detection", "train"), (320, 320))],
    ids=["voc300", "picar320"],
)
def test_boxes_stay_valid_over_many_seeds(data, size):
    root = shared_data(*data)
    split = VocSplit.from_devkit(root, "2012/trainval") if data[0] == "voc2012_sample" else VocSplit.from_folder(root)
    classes = VOC_CLASSES if data[0] == "voc2012_sample" else discover_classes(split)
    dataset = VocDetectionDataset(split, classes, transforms=SSDTrainPreset(size))
    kept = total = 0
    flipped_or_moved = 0
    for seed in range(SEEDS):
        index = seed % len(dataset)
        image, target = dataset[(index, seed)]
        boxes = _check_sample(image, target, size)
        original = dataset.load(index)[1]
        assert set(target["labels"].tolist()) <= set(original["labels"].tolist())
        kept += len(boxes)
        total += len(original["boxes"])
        height, width = original["boxes"].canvas_size
        scale = torch.tensor([size[1] / width, size[0] / height] * 2)
        plain = original["boxes"].as_subclass(torch.Tensor) * scale
        if len(boxes) != len(plain) or not torch.allclose(boxes, plain, atol=0.5):
            flipped_or_moved += 1
    # The augmentation really does something, and crops keep most objects (centres inside the crop).
    assert flipped_or_moved > SEEDS // 2
    assert kept > 0.5 * total


def test_same_seed_same_sample_different_seed_differs():
    split = VocSplit.from_devkit(shared_data("voc2012_sample"), "2012/trainval")
    dataset = VocDetectionDataset(split, VOC_CLASSES, transforms=SSDTrainPreset())
    first, again, other = dataset[(5, 123)], dataset[(5, 123)], dataset[(5, 124)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])
    assert not torch.equal(first[0], other[0])
    # The global RNG is untouched by seeded samples (forked).
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    dataset[(5, 123)]
    assert torch.equal(torch.rand(3), expected)


def test_zoom_out_fills_with_the_mean_colour():
    split = VocSplit.from_devkit(shared_data("voc2012_sample"), "2012/trainval")
    fill = (123.0, 117.0, 104.0)
    preset = SSDTrainPreset(fill=fill, zoom_out_prob=1.0, zoom_out_max=4.0)
    # Only the zoom-out (the photometric distortion would change the canvas colour too).
    zoom = preset.transforms.transforms[1]
    dataset = VocDetectionDataset(split, VOC_CLASSES)
    image, target = dataset.load(0)
    torch.manual_seed(3)
    out_image, out_target = zoom(image, target)
    assert out_image.shape[1] > image.shape[1] and out_image.shape[2] > image.shape[2]
    corners = out_image[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # at least one corner is canvas
    canvas = torch.tensor(fill, dtype=torch.uint8)[:, None]
    assert (corners == canvas).all(dim=0).any()


def test_image_without_boxes_survives_augmentation():
    split = VocSplit.from_devkit(shared_data("voc2012_sample"), "2012/trainval")
    dataset = VocDetectionDataset(split, VOC_CLASSES)
    image, target = dataset.load(0)
    empty = {
        "boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=target["boxes"].canvas_size),
        "labels": target["labels"][:0],
        "difficult": target["difficult"][:0],
        "image_id": 0,
    }
    preset = SSDTrainPreset()
    for seed in range(10):
        torch.manual_seed(seed)
        out_image, out_target = preset(image, dict(empty))
        assert out_image.shape == (3, 300, 300) and out_target["boxes"].shape == (0, 4)


def test_eval_preset_only_resizes():
    split = VocSplit.from_devkit(shared_data("voc2012_sample"), "2012/trainval")
    dataset = VocDetectionDataset(split, VOC_CLASSES, transforms=SSDEvalPreset())
    image, target = dataset[0]
    original = dataset.load(0)[1]
    h, w = original["boxes"].canvas_size
    boxes = _check_sample(image, target, (300, 300))
    expected = original["boxes"].as_subclass(torch.Tensor) * torch.tensor([300 / w, 300 / h] * 2)
    torch.testing.assert_close(boxes, expected)
