"""VOC format reading on the real VOC2012 sample and the PiCar custom-class set, plus malformed inputs."""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import PICAR_CLASSES, shared_data

from ssd_ros.evaluation.voc import VocFormatError, VocSplit, discover_classes, parse_annotation
from ssd_ros.vision.image_codec import read_image_file

ANNOTATION = """<annotation>
  <filename>{stem}.jpg</filename>
  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>
  {objects}
</annotation>"""
OBJECT = "<object><name>{name}</name>{difficult}<bndbox>{box}</bndbox></object>"


def write_xml(path: Path, objects=(), width=100, height=80) -> Path:
    """A small VOC XML file; objects are (name, (xmin, ymin, xmax, ymax), difficult-or-None)."""
    parts = []
    for name, box, difficult in objects:
        coords = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
        flag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
        parts.append(OBJECT.format(name=name, difficult=flag, box=coords))
    path.write_text(ANNOTATION.format(stem=path.stem, width=width, height=height, objects="".join(parts)))
    return path


def write_jpeg(path: Path, width=100, height=80) -> Path:
    assert cv2.imwrite(str(path), np.full((height, width, 3), 127, np.uint8))
    return path


# --- the real VOC2012 sample ----------------------------------------------------------------------------------


def voc_annotation(stem: str) -> Path:
    return shared_data("voc2012_sample", "VOC2012", "Annotations", f"{stem}.xml")


def test_single_person_file_exact():
    # 2007_000027.xml: 486x500, one person, xmin 174 ymin 101 xmax 349 ymax 351, difficult 0.
    ann = parse_annotation(voc_annotation("2007_000027"))
    assert (ann.filename, ann.width, ann.height) == ("2007_000027.jpg", 486, 500)
    assert ann.names == ["person"]
    # 1-based inclusive -> 0-based edges: min corner minus one, max corner unchanged.
    np.testing.assert_array_equal(ann.boxes, np.array([[173, 100, 349, 351]], np.float32))
    assert ann.boxes.dtype == np.float32 and ann.difficult.dtype == bool
    assert ann.difficult.tolist() == [False]
    assert ann.dropped == 0


def test_multi_object_file_with_difficult_exact():
    # 2007_000129.xml (334x500), read by hand: three bicycles (2nd, 3rd difficult), three persons (1st difficult).
    ann = parse_annotation(voc_annotation("2007_000129"))
    assert (ann.width, ann.height) == (334, 500)
    assert ann.names == ["bicycle", "bicycle", "bicycle", "person", "person", "person"]
    assert ann.difficult.tolist() == [False, True, True, True, False, False]
    raw = [(70, 202, 255, 500), (251, 242, 334, 500), (1, 144, 67, 436), (1, 1, 66, 363), (74, 1, 272, 462)]
    raw.append((252, 19, 334, 487))
    expected = np.array([(x1 - 1, y1 - 1, x2, y2) for x1, y1, x2, y2 in raw], np.float32)
    np.testing.assert_array_equal(ann.boxes, expected)
    # A box touching the image border (xmax = width) spans to exactly the image edge.
    assert ann.boxes[:, 2].max() == ann.width


def test_two_classes_file_exact():
    # 2007_000032.xml (500x281): aeroplane x2, person x2, none difficult.
    ann = parse_annotation(voc_annotation("2007_000032"))
    assert ann.names == ["aeroplane", "aeroplane", "person", "person"]
    assert not ann.difficult.any()
    np.testing.assert_array_equal(
        ann.boxes, np.array([[103, 77, 375, 183], [132, 87, 197, 123], [194, 179, 213, 229], [25, 188, 44, 238]])
    )


def test_devkit_trainval_counts():
    # Totals from the data README: 100 images, 273 objects, 38 difficult, 20 classes, 91 persons.
    split = VocSplit.from_devkit(shared_data("voc2012_sample"), "2012/trainval")
    assert len(split) == 100
    annotations = [item.annotation() for item in split]
    assert sum(len(a) for a in annotations) == 273
    assert sum(int(a.difficult.sum()) for a in annotations) == 38
    assert sum(a.dropped for a in annotations) == 0
    counts = collections.Counter(n for a in annotations for n in a.names)
    assert counts["person"] == 91
    classes = discover_classes(split)
    assert len(classes) == 20 and list(classes) == sorted(classes)
    from ssd_ros.vision.model import VOC_CLASSES

    assert set(classes) == set(VOC_CLASSES)
    for image_id, image_path, xml_path in split:
        assert image_path.name == f"{image_id}.jpg" and xml_path.name == f"{image_id}.xml"


def test_devkit_train_val_partition_and_concat():
    root = shared_data("voc2012_sample")
    train = VocSplit.from_devkit(root, "2012/train")
    val = VocSplit.from_devkit(root, "2012/val")
    assert (len(train), len(val)) == (80, 20)
    ids = [item.image_id for item in train] + [item.image_id for item in val]
    assert ids == sorted(ids)  # README: train = first 80 sorted ids, val = last 20.
    both = VocSplit.concat([train, val])
    assert len(both) == 100 and both[80] == val[0]
    assert [i.image_id for i in both] == [i.image_id for i in VocSplit.from_devkit(root, "2012/trainval")]
    # The same year folder through from_folder, with and without an image set.
    year = root / "VOC2012"
    assert [i.image_id for i in VocSplit.from_folder(year, "val")] == [i.image_id for i in val]
    assert len(VocSplit.from_folder(year)) == 100


def test_split_image_reads_at_its_annotation_size_in_rgb():
    split = VocSplit.from_devkit(shared_data("voc2012_sample"), "2012/val")
    item = split[0]
    rgb = read_image_file(item.image_path)
    ann = item.annotation()
    assert rgb.shape == (ann.height, ann.width, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., ::-1], cv2.imread(str(item.image_path)))


# --- custom classes with spaces (PiCar frames) -------------------------------------------------------------------


def test_picar_custom_classes_with_spaces():
    detection = shared_data("picar_camera", "detection")
    train = VocSplit.from_folder(detection / "train")
    test = VocSplit.from_folder(detection / "test")
    assert (len(train), len(test)) == (43, 5)
    assert train[0].image_path.suffix == ".jpg" and train[0].image_path.stem == train[0].xml_path.stem
    classes = discover_classes([train, test])
    assert classes == PICAR_CLASSES
    # Per-class box counts from the data README (train + test).
    counts = collections.Counter(n for item in VocSplit.concat([train, test]) for n in item.annotation().names)
    assert counts == {
        "Person": 121,
        "Stop Sign": 69,
        "Red Traffic Light": 62,
        "Speed Limit 25": 44,
        "Green Traffic Light": 37,
        "Speed Limit 40": 37,
    }


def test_picar_known_file_exact():
    train = shared_data("picar_camera", "detection", "train")
    ann = parse_annotation(train / "2019-04-16-095702.xml")
    assert ann.names == ["Green Traffic Light", "Red Traffic Light", "Speed Limit 25", "Red Traffic Light", "Stop Sign"]
    # Stop Sign: xmin 551 ymin 148 xmax 595 ymax 194 in the file.
    np.testing.assert_array_equal(ann.boxes[4], [550, 147, 595, 194])
    assert ann.label_indices(discover_classes(VocSplit.from_folder(train))).tolist() == [0, 2, 3, 2, 5]


# --- synthetic edge cases and errors ------------------------------------------------------------------------------


def test_clamping_degenerate_boxes_whitespace_and_floats(tmp_path):
    xml = write_xml(
        tmp_path / "a.xml",
        [
            ("  Speed Limit 25 \n", (0, -5, 120, 90), 0),  # outside the 100x80 image: clamped
            ("cat", (10, 10, 10, 20), None),  # xmin - 1 = 9 < 10: one pixel wide, kept
            ("cat", (30, 10, 28, 20), None),  # xmax < xmin: degenerate, dropped
            ("dog", (101, 10, 120, 20), 1),  # entirely right of the image: zero width after clamping, dropped
            ("dog", (20.5, 10.25, 40.75, 30), 1),  # float coordinates (some labelling tools write them)
        ],
    )
    ann = parse_annotation(xml)
    assert ann.names == ["Speed Limit 25", "cat", "dog"]
    assert ann.dropped == 2
    np.testing.assert_array_equal(ann.boxes, np.array([[0, 0, 100, 80], [9, 9, 10, 20], [19.5, 9.25, 40.75, 30]]))
    assert ann.difficult.tolist() == [False, False, True]


def test_no_objects_is_an_empty_annotation(tmp_path):
    ann = parse_annotation(write_xml(tmp_path / "empty.xml"))
    assert len(ann) == 0 and ann.boxes.shape == (0, 4) and ann.difficult.shape == (0,)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("<annotation><size><width>10</width>", "broken XML"),
        ("<annotation><filename>x.jpg</filename></annotation>", "missing <size>"),
        ("<annotation><size><width>ten</width><height>8</height></size></annotation>", "not a number"),
        ("<annotation><size><width>0</width><height>8</height></size></annotation>", "bad image size"),
        (
            "<annotation><size><width>10</width><height>8</height></size>"
            "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>nan</xmax><ymax>5</ymax></bndbox>"
            "</object></annotation>",
            "not finite",
        ),
        (
            "<annotation><size><width>10</width><height>8</height></size>"
            "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><ymax>5</ymax></bndbox></object></annotation>",
            "missing <xmax>",
        ),
        (
            "<annotation><size><width>10</width><height>8</height></size><object><name> </name></object></annotation>",
            "missing <name>",
        ),
        (
            "<annotation><size><width>10</width><height>8</height></size><object><name>cat</name></object>"
            "</annotation>",
            "missing <bndbox>",
        ),
    ],
)
def test_malformed_xml_names_file_and_problem(tmp_path, content, problem):
    path = tmp_path / "bad_file.xml"
    path.write_text(content)
    with pytest.raises(VocFormatError) as error:
        parse_annotation(path)
    assert str(path) in str(error.value) and problem in str(error.value)
    assert isinstance(error.value, ValueError)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(VocFormatError, match="nothere.xml: annotation file not found"):
        parse_annotation(tmp_path / "nothere.xml")


def test_plain_folder_missing_image_names_xml(tmp_path):
    write_jpeg(tmp_path / "a.jpg")
    write_xml(tmp_path / "a.xml", [("cat", (1, 1, 5, 5), 0)])
    write_xml(tmp_path / "b.xml", [("cat", (1, 1, 5, 5), 0)])
    with pytest.raises(VocFormatError, match=r"b\.xml: no image b\.jpg"):
        VocSplit.from_folder(tmp_path)
    (tmp_path / "b.xml").unlink()
    write_jpeg(tmp_path / "c.png")
    write_xml(tmp_path / "c.xml")
    split = VocSplit.from_folder(tmp_path)
    assert [(i.image_id, i.image_path.name) for i in split] == [("a", "a.jpg"), ("c", "c.png")]


def test_image_suffixes_in_any_letter_case(tmp_path):
    # Cameras and Windows tools write NAME.JPG; on a case-sensitive filesystem it must still be found.
    for name in ("upper.JPG", "mixed.Jpeg", "both.PNG", "both.jpg", "bmp.BMP"):
        write_jpeg(tmp_path / name)
        write_xml(tmp_path / f"{Path(name).stem}.xml")
    (tmp_path / "other.jpg.txt").write_text("not an image")
    write_xml(tmp_path / "other.jpg.xml")  # stem "other.jpg": no image other.jpg.<suffix>
    with pytest.raises(VocFormatError, match=r"other\.jpg\.xml: no image"):
        VocSplit.from_folder(tmp_path)
    (tmp_path / "other.jpg.xml").unlink()
    split = VocSplit.from_folder(tmp_path)
    # .jpg before .png (IMAGE_SUFFIXES order), whatever the case.
    found = {i.image_id: i.image_path.name for i in split}
    assert found == {"upper": "upper.JPG", "mixed": "mixed.Jpeg", "both": "both.jpg", "bmp": "bmp.BMP"}
    assert read_image_file(split[0].image_path).shape == (80, 100, 3)


def test_devkit_missing_image_and_annotation_fail_at_listing(tmp_path):
    src = shared_data("voc2012_sample", "VOC2012")
    year = tmp_path / "VOCdevkit" / "VOC2012"
    (year / "ImageSets" / "Main").mkdir(parents=True)
    (year / "JPEGImages").mkdir()
    shutil.copytree(src / "Annotations", year / "Annotations")
    ids = (src / "ImageSets" / "Main" / "val.txt").read_text().split()
    for image_id in ids[:-1]:
        shutil.copy(src / "JPEGImages" / f"{image_id}.jpg", year / "JPEGImages")
    (year / "ImageSets" / "Main" / "val.txt").write_text("\n".join(ids) + "\n")
    # The parent of VOCdevkit is accepted too (how the official tar files extract).
    with pytest.raises(VocFormatError, match=rf"JPEGImages/{ids[-1]}\.jpg: image file not found"):
        VocSplit.from_devkit(tmp_path, "2012/val")
    shutil.copy(src / "JPEGImages" / f"{ids[-1]}.jpg", year / "JPEGImages")
    assert len(VocSplit.from_devkit(tmp_path, "2012/val")) == 20
    (year / "Annotations" / f"{ids[3]}.xml").unlink()
    with pytest.raises(VocFormatError, match=rf"{ids[3]}\.xml: annotation file not found"):
        VocSplit.from_devkit(tmp_path / "VOCdevkit", "2012/val")


@pytest.mark.parametrize(
    ("split", "problem"), [("2012", "YEAR/SET"), ("2007/test", "VOC2007: year folder not found"), ("2012/x", "x.txt")]
)
def test_devkit_bad_split_names(split, problem):
    with pytest.raises(VocFormatError, match=problem):
        VocSplit.from_devkit(shared_data("voc2012_sample"), split)


def test_bad_folders(tmp_path):
    with pytest.raises(VocFormatError, match="dataset folder not found"):
        VocSplit.from_folder(tmp_path / "missing")
    with pytest.raises(VocFormatError, match="no VOC annotations"):
        VocSplit.from_folder(tmp_path)
    with pytest.raises(VocFormatError, match="VOCdevkit folder not found"):
        VocSplit.from_devkit(tmp_path / "missing", "2007/test")


def test_label_indices_rejects_unknown_class(tmp_path):
    ann = parse_annotation(write_xml(tmp_path / "a.xml", [("cat", (1, 1, 5, 5), 0), ("Stop Sign", (1, 1, 5, 5), 0)]))
    assert ann.label_indices(["Stop Sign", "cat"]).tolist() == [1, 0]
    with pytest.raises(VocFormatError, match=r"a\.xml: classes \['Stop Sign'\] are not in the class list"):
        ann.label_indices(["cat", "dog"], source=tmp_path / "a.xml")


@pytest.mark.parametrize(
    "bad_id", ["../../outside/secret", "..\\..\\outside\\secret", "..", "sub/../../../outside/secret"]
)
def test_image_set_ids_that_leave_the_dataset_are_refused(tmp_path, bad_id):
    """A list naming ``../../outside/secret`` would read an annotation and image outside the dataset."""
    outside = tmp_path / "outside"
    outside.mkdir()
    write_xml(outside / "secret.xml", [("cat", (1, 1, 5, 5), 0)])
    cv2.imwrite(str(outside / "secret.jpg"), np.zeros((8, 8, 3), np.uint8))
    dataset = tmp_path / "ds"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (dataset / sub).mkdir(parents=True)
    write_xml(dataset / "Annotations" / "a.xml", [("cat", (1, 1, 5, 5), 0)])
    cv2.imwrite(str(dataset / "JPEGImages" / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    (dataset / "ImageSets" / "Main" / "train.txt").write_text(f"a\n{bad_id}\n")
    assert (dataset / "Annotations" / "../../outside/secret.xml").is_file()  # the path really leads out
    with pytest.raises(VocFormatError, match=r"train\.txt:2: image id .* is not a plain file name"):
        VocSplit.from_folder(dataset, "train")
    (dataset / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    assert [item.image_id for item in VocSplit.from_folder(dataset, "train")] == ["a"]
    with pytest.raises(VocFormatError, match="is not a plain name"):
        VocSplit.from_folder(dataset, "../ImageSets/Main/train")


@pytest.mark.parametrize(
    ("flag", "difficult"),
    [
        ("0", False),
        ("1", True),
        ("0.0", False),
        ("1.0", True),
        ("false", False),
        ("False", False),
        ("TRUE", True),
        (" 1 ", True),
        ("", False),
    ],
)
def test_difficult_flags_as_other_tools_write_them(tmp_path, flag, difficult):
    # "0.0" or "False" read as difficult would silently take the object out of the recall's denominator.
    ann = parse_annotation(write_xml(tmp_path / "a.xml", [("cat", (1, 1, 5, 5), flag)]))
    assert ann.difficult.tolist() == [difficult]


@pytest.mark.parametrize("flag", ["maybe", "nan"])
def test_unreadable_difficult_flag_names_file_and_object(tmp_path, flag):
    xml = write_xml(tmp_path / "odd.xml", [("cat", (1, 1, 5, 5), 0), ("dog", (1, 1, 5, 5), flag)])
    with pytest.raises(VocFormatError, match=rf"odd\.xml: <difficult> in <object> #2 \(dog\) is not 0/1 .*'{flag}'"):
        parse_annotation(xml)


def test_image_set_list_with_a_byte_order_mark(tmp_path):
    # Windows editors save UTF-8 lists with a BOM (and CRLF); the first id must still name its files.
    src = shared_data("voc2012_sample", "VOC2012")
    ids = (src / "ImageSets" / "Main" / "val.txt").read_text().split()[:2]
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True)
    for image_id in ids:
        shutil.copy(src / "Annotations" / f"{image_id}.xml", tmp_path / "Annotations")
        shutil.copy(src / "JPEGImages" / f"{image_id}.jpg", tmp_path / "JPEGImages")
    (tmp_path / "ImageSets" / "Main" / "test.txt").write_bytes(("\ufeff" + "\r\n".join(ids) + "\r\n").encode())
    assert [item.image_id for item in VocSplit.from_folder(tmp_path, "test")] == ids
