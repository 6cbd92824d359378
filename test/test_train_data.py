"""The training Dataset's tensors on real VOC and rover data: exact boxes, labels, difficult flags, errors."""

import shutil

import numpy as np
import pytest
import torch
from conftest import PICAR_CLASSES, shared_data
from torch.utils.data import DataLoader

from ssd_ros.evaluation.voc import VocFormatError, VocSplit, discover_classes
from ssd_ros.vision.image_codec import ImageDecodeError
from ssd_ros.vision.model import VOC_CLASSES
from training.dataset import VocDetectionDataset, collate_detection, data_error_message


@pytest.fixture(scope="module")
def voc_dataset():
    split = VocSplit.from_devkit(shared_data("voc2012_sample"), "2012/trainval")
    return VocDetectionDataset(split, VOC_CLASSES)


def _index_of(dataset, image_id):
    return next(i for i, item in enumerate(dataset.split) if item.image_id == image_id)


def test_voc_single_object_image(voc_dataset):
    image, target = voc_dataset[_index_of(voc_dataset, "2007_000027")]
    assert image.shape == (3, 500, 486) and image.dtype == torch.uint8
    # XML: person, xmin 174 ymin 101 xmax 349 ymax 351 (1-based inclusive) -> 0-based edges.
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), torch.tensor([[173.0, 100.0, 349.0, 351.0]]))
    assert target["boxes"].canvas_size == (500, 486)
    assert target["labels"].tolist() == [VOC_CLASSES.index("person") + 1] == [15]
    assert target["difficult"].tolist() == [False]


def test_voc_difficult_flags_and_class_mapping(voc_dataset):
    _, target = voc_dataset[_index_of(voc_dataset, "2007_000129")]
    expected = [
        ("bicycle", False, [69, 201, 255, 500]),
        ("bicycle", True, [250, 241, 334, 500]),
        ("bicycle", True, [0, 143, 67, 436]),
        ("person", True, [0, 0, 66, 363]),
        ("person", False, [73, 0, 272, 462]),
        ("person", False, [251, 18, 334, 487]),
    ]
    labels = target["labels"].tolist()
    assert labels == [VOC_CLASSES.index(name) + 1 for name, _, _ in expected] == [2, 2, 2, 15, 15, 15]
    assert target["difficult"].tolist() == [d for _, d, _ in expected]
    torch.testing.assert_close(
        target["boxes"].as_subclass(torch.Tensor), torch.tensor([b for _, _, b in expected], dtype=torch.float32)
    )


def test_skip_difficult_drops_them(voc_dataset):
    split = voc_dataset.split
    skipping = VocDetectionDataset(split, VOC_CLASSES, skip_difficult=True)
    _, target = skipping[_index_of(skipping, "2007_000129")]
    assert target["labels"].tolist() == [2, 15, 15] and not target["difficult"].any()
    # The whole sample: 273 objects, 38 difficult (data README).
    assert voc_dataset.num_objects() == 273 and skipping.num_objects() == 273 - 38


def test_voc_sample_covers_all_classes(voc_dataset):
    labels = torch.cat([torch.from_numpy(labels) for labels in voc_dataset._labels])
    assert sorted(set(labels.tolist())) == list(range(1, 21))
    assert int((labels == 15).sum()) == 91  # persons, from the data README


def test_custom_folder_classes_with_spaces():
    split = VocSplit.from_folder(shared_data("picar_camera", "detection", "train"))
    classes = discover_classes(split)
    assert classes == PICAR_CLASSES
    dataset = VocDetectionDataset(split, classes)
    index = next(i for i, item in enumerate(split) if item.image_id == "2019-04-16-095702")
    image, target = dataset[index]
    assert image.shape == (3, 480, 640)
    names = [classes[label - 1] for label in target["labels"].tolist()]
    assert names == ["Green Traffic Light", "Red Traffic Light", "Speed Limit 25", "Red Traffic Light", "Stop Sign"]
    torch.testing.assert_close(
        target["boxes"].as_subclass(torch.Tensor),
        torch.tensor(
            [
                [17, 137, 53, 188],
                [230, 127, 260, 182],
                [338, 126, 373, 170],
                [421, 130, 452, 186],
                [550, 147, 595, 194],
            ],
            dtype=torch.float32,
        ),
    )
    # 370 boxes in the picar data, 336 of them in train/ (the rest in test/).
    assert dataset.num_objects() == sum(len(item.annotation()) for item in split)


def test_collate_gives_plain_tensors(voc_dataset):
    images, targets = collate_detection([voc_dataset[0], voc_dataset[1]])
    assert len(images) == len(targets) == 2
    assert type(images[0]) is torch.Tensor and type(targets[0]["boxes"]) is torch.Tensor


def _copy_sample(tmp_path, ids):
    root = shared_data("picar_camera", "detection", "train")
    for image_id in ids:
        shutil.copy(root / f"{image_id}.xml", tmp_path / f"{image_id}.xml")
        shutil.copy(root / f"{image_id}.jpg", tmp_path / f"{image_id}.jpg")
    return tmp_path


def test_broken_xml_names_the_file(tmp_path):
    folder = _copy_sample(tmp_path, ["2019-04-16-095702", "2019-04-16-095731"])
    (folder / "2019-04-16-095731.xml").write_text("<annotation><size><width>640</width>")
    split = VocSplit.from_folder(folder)
    with pytest.raises(VocFormatError, match="2019-04-16-095731.xml"):
        VocDetectionDataset(
            split, ("Green Traffic Light", "Person", "Red Traffic Light", "Speed Limit 25", "Stop Sign")
        )


def test_missing_image_names_the_file(tmp_path):
    folder = _copy_sample(tmp_path, ["2019-04-16-095702", "2019-04-16-095731"])
    split = VocSplit.from_folder(folder)
    classes = discover_classes(split)
    dataset = VocDetectionDataset(split, classes)
    (folder / "2019-04-16-095731.jpg").unlink()  # vanishes after listing (e.g. a network share)
    with pytest.raises(ImageDecodeError, match="2019-04-16-095731.jpg: image file not found"):
        dataset[1]
    with pytest.raises(VocFormatError, match="2019-04-16-095731"):
        VocSplit.from_folder(folder)


def test_truncated_image_names_the_file_also_from_a_worker_process(tmp_path):
    folder = _copy_sample(tmp_path, ["2019-04-16-095702", "2019-04-16-095731"])
    broken = folder / "2019-04-16-095731.jpg"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # cut in its scan: OpenCV alone would fill the rest with grey
    split = VocSplit.from_folder(folder)
    dataset = VocDetectionDataset(split, discover_classes(split))
    message = f"{broken}: truncated JPEG: no end-of-image marker after its image data ({len(data) // 2} bytes)"
    with pytest.raises(ImageDecodeError) as direct:
        dataset[1]
    assert data_error_message(direct.value) == str(direct.value) == message
    # A DataLoader worker's error arrives wrapped in its traceback; the user gets the one line back.
    # Spawned, not forked from the suite's process, which earlier tests left with DDS threads (a fork can abort).
    loader = DataLoader(
        dataset, batch_size=2, num_workers=1, collate_fn=collate_detection, multiprocessing_context="spawn"
    )
    with pytest.raises(ImageDecodeError, match="Original Traceback") as wrapped:
        next(iter(loader))
    assert data_error_message(wrapped.value) == message


def test_unknown_class_names_the_file(tmp_path):
    folder = _copy_sample(tmp_path, ["2019-04-16-095702"])
    with pytest.raises(VocFormatError, match=r"2019-04-16-095702.xml.*Stop Sign"):
        VocDetectionDataset(VocSplit.from_folder(folder), ("Person",))


def test_image_without_boxes_is_a_valid_sample(tmp_path):
    folder = _copy_sample(tmp_path, ["2019-04-16-095702"])
    xml = folder / "2019-04-16-095702.xml"
    text = xml.read_text()
    xml.write_text(text[: text.index("<object>")] + "</annotation>\n")
    dataset = VocDetectionDataset(VocSplit.from_folder(folder), ("Person",))
    image, target = dataset[0]
    assert image.shape == (3, 480, 640)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert np.asarray(target["difficult"]).shape == (0,)
