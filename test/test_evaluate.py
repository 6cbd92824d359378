"""training/evaluate.py end to end on the real VOC2012 sample and PiCar frames, with checkpoints made here."""

from __future__ import annotations

import collections
import contextlib
import csv
import io
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PICAR_CLASSES, REPO_ROOT, assert_same_detections, lively_ssdlite, make_checkpoint, shared_data

from ssd_ros.evaluation.voc import VocSplit
from ssd_ros.evaluation.voc_metric import evaluate_detections
from ssd_ros.tools import export_model
from ssd_ros.vision.detections import Detections
from ssd_ros.vision.model import VOC_CLASSES
from training.evaluate import main

# The small architecture keeps the CPU runs short; evaluate.py treats both the same way.
ARCHITECTURE = "ssdlite320_mobilenet_v3"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        "voc": make_checkpoint(folder / "voc.pt", VOC_CLASSES, ARCHITECTURE),
        "picar": make_checkpoint(folder / "picar.pt", PICAR_CLASSES, ARCHITECTURE),
    }


def run(*argv) -> tuple[int, str, str]:
    """main() in-process, returning (exit status, stdout, stderr); argparse exits count as statuses."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exit_:
            status = exit_.code
    return status, out.getvalue(), err.getvalue()


def table_rows(text: str) -> dict[str, str]:
    """Class -> AP text of the Markdown AP table in ``text``."""
    rows = {}
    for line in text.splitlines():
        match = re.fullmatch(r"\| (.+?) +\| (\d\.\d{4}|n/a) +\| +(\d+) \|", line)
        if match:
            rows[match[1]] = match[2]
    return rows


def read_detections_csv(path: Path, split, class_names) -> list[Detections]:
    """The raw detections file, regrouped per image in split order."""
    per_image = collections.defaultdict(list)
    with path.open() as f:
        for row in csv.DictReader(f):
            per_image[row["image_id"]].append(row)
    index = {name: i for i, name in enumerate(class_names)}
    found = []
    for item in split:
        rows = per_image.pop(item.image_id, [])
        boxes = np.array([[float(r[k]) for k in ("x_min", "y_min", "x_max", "y_max")] for r in rows], np.float32)
        scores = np.array([float(r["score"]) for r in rows], np.float32)
        labels = np.array([index[r["class"]] for r in rows], np.int64)
        found.append(Detections(boxes.reshape(-1, 4), scores, labels, tuple(class_names)))
    assert not per_image, f"detections for images outside the split: {list(per_image)[:3]}"
    return found


@pytest.fixture(scope="module")
def voc_val_run(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "voc_val"
    root = shared_data("voc2012_sample")
    status, stdout, stderr = run(
        "--checkpoint", checkpoints["voc"], "--data", root, "--split", "2012/val", "--out", out
    )
    return status, stdout, stderr, out, VocSplit.from_devkit(root, "2012/val")


def test_voc_val_table_and_numbers(voc_val_run):
    status, stdout, stderr, out, split = voc_val_run
    assert status == 0, stderr
    rows = table_rows(stdout)
    assert list(rows) == [*VOC_CLASSES, "mAP"]  # a row per class in checkpoint order, then the mAP
    present = {n for item in split for n in item.annotation().names}
    for name in VOC_CLASSES:
        assert (rows[name] == "n/a") == (name not in present), name
    assert 0.0 <= float(rows["mAP"]) <= 1.0
    assert re.search(r"20 images in [\d.]+ s: [\d.]+ images/s on cpu", stdout)
    results = json.loads((out / "results.json").read_text())
    assert results["num_images"] == 20 and results["metric"] == "11point" and results["iou_threshold"] == 0.5
    assert results["images_per_s"] > 0 and results["dataset"] == "VOC2012/val"
    assert results["classes_without_ground_truth"] == [n for n in VOC_CLASSES if n not in present]
    for entry in results["classes"]:
        assert entry["ap"] is None or 0.0 <= entry["ap"] <= 1.0
        assert all(0.0 <= p <= 1.0 for p in entry["precision"])
    assert results["map"] == pytest.approx(float(rows["mAP"]), abs=5e-5)
    assert results["annotation_size_mismatches"] == []
    assert (out / "ap_table.md").read_text().strip() in stdout
    assert (out / "pr_curves.png").read_bytes()[:4] == b"\x89PNG"
    ap_rows = list(csv.reader((out / "ap.csv").open()))
    assert ap_rows[0][0] == "class" and [r[0] for r in ap_rows[1:]] == [*VOC_CLASSES, "mAP"]


def test_voc_val_raw_detections_reproduce_the_metric(voc_val_run):
    status, _, _, out, split = voc_val_run
    assert status == 0
    results = json.loads((out / "results.json").read_text())
    found = read_detections_csv(out / "detections.csv", split, VOC_CLASSES)
    assert sum(len(d) for d in found) == results["detections"] > 0
    assert max(len(d) for d in found) <= 200  # --max-detections default
    assert min(float(s) for d in found for s in d.scores) >= 0.01  # --score-threshold default
    again = evaluate_detections(found, [item.annotation() for item in split], VOC_CLASSES)
    for entry, c in zip(results["classes"], again.classes):
        assert entry["name"] == c.name
        assert entry["ap"] == (None if math.isnan(c.ap) else pytest.approx(c.ap, abs=1e-12))
        assert (entry["true_positives"], entry["false_positives"]) == (c.true_positives, c.false_positives)


def test_folder_options_allpoint_iou_limit(checkpoints, tmp_path):
    # The same year folder through --folder/--image-set, all-point AP at IoU 0.3 on the first 4 images.
    year = shared_data("voc2012_sample", "VOC2012")
    out = tmp_path / "out"
    argv = ["--checkpoint", checkpoints["voc"], "--folder", year, "--image-set", "val", "--metric", "allpoint"]
    status, stdout, stderr = run(*argv, "--iou", "0.3", "--limit", "4", "--batch-size", "3", "--out", out)
    assert status == 0, stderr
    assert "all-point (VOC2010+) AP at IoU > 0.3 over 4 images" in stdout
    results = json.loads((out / "results.json").read_text())
    assert (results["metric"], results["iou_threshold"], results["num_images"]) == ("allpoint", 0.3, 4)
    split = VocSplit.from_folder(year, "val")[:4]
    found = read_detections_csv(out / "detections.csv", split, VOC_CLASSES)
    again = evaluate_detections(
        found, [i.annotation() for i in split], VOC_CLASSES, iou_threshold=0.3, metric="allpoint"
    )
    assert results["map"] == (None if math.isnan(again.map) else pytest.approx(again.map, abs=1e-12))


def test_exported_model_on_a_fast_backend_gives_the_same_table(checkpoints, tmp_path):
    """An ONNX export through OpenVINO: the same per-class AP table as the checkpoint through torch."""
    model = lively_ssdlite(len(PICAR_CLASSES) + 1)
    checkpoint = make_checkpoint(tmp_path / "lively.pt", PICAR_CLASSES, ARCHITECTURE, model=model)
    exported = tmp_path / "lively.onnx"
    assert export_model.main(["--checkpoint", str(checkpoint), "--out", str(exported), "--quiet"]) == 0
    folder = shared_data("picar_camera", "detection", "test")
    # Well below the detection cap, so near-equal scores at the cut cannot make the two lists differ.
    common = ["--folder", folder, "--limit", "4", "--score-threshold", "0.5", "--max-detections", "1000"]
    status, reference, stderr = run("--checkpoint", checkpoint, *common, "--out", tmp_path / "torch")
    assert status == 0, stderr
    status, fast, stderr = run(
        "--checkpoint", exported, "--backend", "openvino", "--threads", "1", *common, "--out", tmp_path / "ov"
    )
    assert status == 0, stderr
    assert table_rows(fast) == table_rows(reference) and len(table_rows(fast)) == len(PICAR_CLASSES) + 1
    # An untrained model's AP is 0 everywhere: the raw detections are the real comparison.
    split = VocSplit.from_folder(folder)[:4]
    ours = read_detections_csv(tmp_path / "ov" / "detections.csv", split, PICAR_CLASSES)
    expected = read_detections_csv(tmp_path / "torch" / "detections.csv", split, PICAR_CLASSES)
    assert sum(map(len, expected)) >= 20
    for a, b in zip(expected, ours):
        assert_same_detections(a, b, box_px=0.5, score=1e-3)
    results = json.loads((tmp_path / "ov" / "results.json").read_text())
    assert (results["backend"], results["precision"], results["num_threads"]) == ("openvino", "fp32", 1)
    status, _, stderr = run("--checkpoint", exported, "--backend", "torch", *common, "--out", tmp_path / "bad")
    assert status == 2 and "exported model: run it with backend onnxruntime or openvino" in stderr


def test_custom_classes_with_spaces(checkpoints, tmp_path):
    folder = shared_data("picar_camera", "detection", "test")
    argv = ["--checkpoint", checkpoints["picar"], "--folder", folder, "--limit", "3", "--out", tmp_path / "o"]
    status, stdout, stderr = run(*argv)
    assert status == 0, stderr
    rows = table_rows(stdout)
    assert list(rows) == [*PICAR_CLASSES, "mAP"]
    assert all(v == "n/a" or 0.0 <= float(v) <= 1.0 for v in rows.values())
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["num_images"] == 3 and results["unannotated_images"] == [] and results["dropped_boxes"] == {}


# --- errors: exit status 2 before any work ---------------------------------------------------------------------


def assert_fails_before_work(tmp_path, argv, *messages):
    out = tmp_path / "never"
    status, stdout, stderr = run(*argv, "--out", out)
    assert status == 2, (stdout, stderr)
    for message in messages:
        assert message in stderr, stderr
    assert not out.exists()  # nothing was produced


def test_missing_paths(checkpoints, tmp_path):
    root = shared_data("voc2012_sample")
    voc = ["--checkpoint", checkpoints["voc"]]
    missing = ["--checkpoint", tmp_path / "nope.pt", "--data", root, "--split", "2012/val"]
    assert_fails_before_work(tmp_path, missing, "nope.pt not found")
    assert_fails_before_work(tmp_path, [*voc, "--data", tmp_path / "nodata"], "nodata: VOCdevkit folder not found")
    assert_fails_before_work(tmp_path, [*voc, "--data", root], "VOC2007: year folder not found")
    assert_fails_before_work(tmp_path, [*voc, "--data", root, "--split", "2012/x"], "x.txt")
    assert_fails_before_work(tmp_path, [*voc, "--folder", tmp_path / "nofolder"], "dataset folder not found")


def test_class_mismatch(checkpoints, tmp_path):
    # VOC data against the PiCar checkpoint: every VOC class present in val is unknown to it.
    root = shared_data("voc2012_sample")
    argv = ["--checkpoint", checkpoints["picar"], "--data", root, "--split", "2012/val"]
    assert_fails_before_work(tmp_path, argv, "classes the checkpoint does not know", "'person'", "Stop Sign")


def test_broken_annotation_and_missing_image(checkpoints, tmp_path):
    source = shared_data("picar_camera", "detection", "test")
    folder = tmp_path / "data"
    shutil.copytree(source, folder)
    first_xml = sorted(folder.glob("*.xml"))[0]
    first_xml.write_text(first_xml.read_text()[:-40])  # truncated file
    argv = ["--checkpoint", checkpoints["picar"], "--folder", folder]
    assert_fails_before_work(tmp_path, argv, f"{first_xml}: broken XML")
    shutil.copy(source / first_xml.name, first_xml)
    first_xml.with_suffix(".jpg").unlink()
    assert_fails_before_work(tmp_path, argv, f"{first_xml}: no image")


def test_truncated_image_is_one_line_naming_it(checkpoints, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(shared_data("picar_camera", "detection", "test"), folder)
    broken = sorted(folder.glob("*.jpg"))[2]
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # cut in transfer: OpenCV alone would fill it with grey
    out = tmp_path / "out"
    status, _, stderr = run("--checkpoint", checkpoints["picar"], "--folder", folder, "--out", out, "--no-progress")
    assert status == 2
    assert stderr.splitlines() == [f"evaluate.py: error: {broken}: truncated JPEG: no end-of-image marker after its "
                                   f"image data ({len(data) // 2} bytes)"]  # fmt: skip
    assert not out.exists()


def test_bad_checkpoint_file(tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    root = shared_data("voc2012_sample")
    assert_fails_before_work(tmp_path, ["--checkpoint", bogus, "--data", root, "--split", "2012/val"], "bogus.pt")


def test_checkpoint_folder_names_the_files_inside(checkpoints, tmp_path):
    root = shared_data("voc2012_sample")
    argv = ["--checkpoint", checkpoints["voc"].parent, "--data", root, "--split", "2012/val"]
    assert_fails_before_work(
        tmp_path, argv, "is a folder, not a checkpoint file; it holds picar.pt, voc.pt: give one, e.g."
    )


def test_devkit_and_folder_mixed_up_get_a_hint(checkpoints, tmp_path):
    devkit, folder = shared_data("voc2012_sample"), shared_data("picar_camera", "detection", "test")
    assert_fails_before_work(
        tmp_path, ["--checkpoint", checkpoints["picar"], "--data", folder], f"give it as --folder {folder}"
    )
    assert_fails_before_work(
        tmp_path, ["--checkpoint", checkpoints["voc"], "--folder", devkit], "is a VOCdevkit (VOC2012)", "--data"
    )


def test_results_that_cannot_be_written_are_a_failed_run(checkpoints, tmp_path):
    folder = shared_data("picar_camera", "detection", "test")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should go")
    status, _, stderr = run("--checkpoint", checkpoints["picar"], "--folder", folder, "--limit", "1", "--out", blocker)
    assert status == 1 and f"cannot write the results to {blocker}" in stderr, stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_unavailable(checkpoints, tmp_path):
    root = shared_data("voc2012_sample")
    argv = ["--checkpoint", checkpoints["voc"], "--data", root, "--split", "2012/val", "--device", "cuda"]
    assert_fails_before_work(tmp_path, argv, "CUDA is not available")


def test_bad_option_combinations(checkpoints, tmp_path):
    status, _, stderr = run("--checkpoint", checkpoints["voc"], "--folder", tmp_path, "--split", "2012/val")
    assert status == 2 and "--split applies to --data" in stderr
    status, _, stderr = run("--checkpoint", checkpoints["voc"], "--folder", tmp_path, "--split=2012/val")
    assert status == 2 and "--split applies to --data" in stderr
    status, _, stderr = run("--checkpoint", checkpoints["voc"], "--data", tmp_path, "--folder", tmp_path)
    assert status == 2 and "not allowed with" in stderr
    status, _, stderr = run("--checkpoint", checkpoints["voc"], "--data", tmp_path, "--iou", "1.5")
    assert status == 2 and "--iou" in stderr


def test_runs_as_a_script():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "training" / "evaluate.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert "--checkpoint" in result.stdout and "--metric {11point,allpoint}" in result.stdout


def test_boxes_dropped_by_the_parser_are_reported(checkpoints, tmp_path):
    # An inverted box and one beyond the image: the devkit would count both as missed objects, we cannot score them.
    folder = tmp_path / "data"
    shutil.copytree(shared_data("picar_camera", "detection", "test"), folder)
    xml = sorted(folder.glob("*.xml"))[0]
    bad = "".join(
        f"<object><name>Stop Sign</name><bndbox><xmin>{a}</xmin><ymin>10</ymin><xmax>{b}</xmax><ymax>20</ymax>"
        "</bndbox></object>"
        for a, b in ((50, 40), (700, 720))
    )
    xml.write_text(xml.read_text().replace("</annotation>", bad + "</annotation>"))
    out = tmp_path / "out"
    status, _, stderr = run("--checkpoint", checkpoints["picar"], "--folder", folder, "--limit", "1", "--out", out)
    assert status == 0, stderr
    assert json.loads((out / "results.json").read_text())["dropped_boxes"] == {xml.stem: 2}
    assert "warning: 2 annotated boxes in 1 images are empty or outside their image and are not scored" in stderr
    assert xml.stem in stderr


def test_images_without_xml_in_a_folder_are_named(checkpoints, tmp_path):
    # labelImg saves no XML for an image without boxes: such a negative image is left out of the split, and its
    # false positives with it, so the run says which images it did not evaluate.
    folder = tmp_path / "data"
    shutil.copytree(shared_data("picar_camera", "detection", "test"), folder)
    negative = sorted(folder.glob("*.jpg"))[-1]
    negative.with_suffix(".xml").unlink()
    out = tmp_path / "out"
    status, _, stderr = run("--checkpoint", checkpoints["picar"], "--folder", folder, "--limit", "1", "--out", out)
    assert status == 0, stderr
    assert json.loads((out / "results.json").read_text())["unannotated_images"] == [negative.name]
    assert "warning: 1 images have no XML annotation and were not evaluated" in stderr and negative.name in stderr
