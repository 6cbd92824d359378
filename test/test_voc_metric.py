"""VOC AP: hand-worked cases, and a cross-check against a plain re-implementation of the devkit's loop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ssd_ros.evaluation.voc import VocAnnotation
from ssd_ros.evaluation.voc_metric import evaluate_detections, matched_fraction, voc_ap
from ssd_ros.vision.detections import Detections

A = [0, 0, 10, 10]
B = [20, 20, 30, 30]
NOWHERE = [50, 50, 60, 60]


def gt(boxes=(), names=(), difficult=None) -> VocAnnotation:
    difficult = [False] * len(names) if difficult is None else difficult
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return VocAnnotation("x.jpg", 100, 100, boxes, list(names), np.asarray(difficult, bool))


def dets(boxes=(), scores=(), names=()) -> Detections:
    return Detections.from_named(boxes, scores, names) if len(names) else Detections.empty()


# --- hand-worked cases ------------------------------------------------------------------------------------------


def test_basic_tp_fp_tp_both_interpolations():
    # Ranked TP, FP, TP against 2 objects: precision 1, 1/2, 2/3; recall 1/2, 1/2, 1.
    # 11-point: t = 0..0.5 (6 points) reach precision 1; t = 0.6..1 (5 points) only 2/3 -> (6 + 5*2/3)/11.
    # all-point: envelope 1 on recall (0, 0.5], 2/3 on (0.5, 1] -> 0.5 + 1/3.
    truth = [gt([A, B], ["cat", "cat"])]
    found = [dets([A, NOWHERE, B], [0.9, 0.8, 0.7], ["cat"] * 3)]
    result = evaluate_detections(found, truth)
    cat = result["cat"]
    np.testing.assert_allclose(cat.precision, [1, 1 / 2, 2 / 3])
    np.testing.assert_allclose(cat.recall, [0.5, 0.5, 1])
    np.testing.assert_allclose(cat.scores, [0.9, 0.8, 0.7], rtol=1e-6)
    assert (cat.npos, cat.true_positives, cat.false_positives, cat.ignored) == (2, 2, 1, 0)
    assert cat.ap == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert result.map == pytest.approx(cat.ap)
    assert evaluate_detections(found, truth, metric="allpoint")["cat"].ap == pytest.approx(0.5 + 1 / 3)


def test_detections_ranked_by_score_not_input_order():
    # Same detections as above given lowest score first: the ranking must be identical.
    truth = [gt([A, B], ["cat", "cat"])]
    found = [dets([B, NOWHERE, A], [0.7, 0.8, 0.9], ["cat"] * 3)]
    assert evaluate_detections(found, truth)["cat"].ap == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_ties_keep_image_then_detection_order():
    # One object; a FP and a TP with the same score 0.5.
    # FP ranked first: precision 0, 1/2 at recall 0, 1 -> every 11-point threshold gets 1/2 -> AP 0.5.
    # TP ranked first: precision 1 at recall 1 -> AP 1.
    truth_a, truth_b = gt(), gt([A], ["cat"])
    fp_image, tp_image = dets([NOWHERE], [0.5], ["cat"]), dets([A], [0.5], ["cat"])
    assert evaluate_detections([fp_image, tp_image], [truth_a, truth_b])["cat"].ap == pytest.approx(0.5)
    assert evaluate_detections([tp_image, fp_image], [truth_b, truth_a])["cat"].ap == pytest.approx(1.0)
    # Within one image: input order breaks the tie.
    truth = [gt([A], ["cat"])]
    assert evaluate_detections([dets([NOWHERE, A], [0.5, 0.5], ["cat"] * 2)], truth)["cat"].ap == pytest.approx(0.5)
    assert evaluate_detections([dets([A, NOWHERE], [0.5, 0.5], ["cat"] * 2)], truth)["cat"].ap == pytest.approx(1.0)
    # All-point for the FP-first order: envelope 1/2 over recall (0, 1] -> 0.5.
    tie = evaluate_detections([fp_image, tp_image], [truth_a, truth_b], metric="allpoint")["cat"]
    assert tie.ap == pytest.approx(0.5)


def test_difficult_objects_are_neither_tp_nor_fp():
    # Objects: A (normal), B (difficult). Ranked: on B (ignored), on B again (ignored, not a duplicate FP),
    # on A (TP), nowhere (FP). Counted list: TP, FP -> precision 1, 1/2 at recall 1, 1 -> AP 1 (both metrics).
    # Were the first detection a FP, AP would be 0.5 — so this fails if difficult is not ignored.
    truth = [gt([A, B], ["cat", "cat"], [False, True])]
    found = [dets([B, B, A, NOWHERE], [0.95, 0.9, 0.8, 0.7], ["cat"] * 4)]
    for metric in ("11point", "allpoint"):
        cat = evaluate_detections(found, truth, metric=metric)["cat"]
        assert cat.ap == pytest.approx(1.0)
        assert (cat.npos, cat.num_difficult, cat.true_positives, cat.false_positives, cat.ignored) == (1, 1, 1, 1, 2)
        np.testing.assert_allclose(cat.precision, [1, 0.5])


def test_duplicates_are_false_positives_without_fallback():
    # A = [0,0,10,10], A2 = [1,0,11,10] (IoU(A, A2) = 90/110). Detection 1 is A exactly (TP for A).
    # Detection 2 = [0.2,0,10.2,10]: IoU 98/102 with A, 92/108 with A2 -> best is A, already taken -> FP,
    # even though A2 (IoU > 0.5) is free: the devkit does not fall back to the second-best object.
    # Ranked TP, FP of 2 objects: precision 1, 1/2 at recall 1/2, 1/2.
    # 11-point: 6 thresholds (0..0.5) at precision 1 -> 6/11; all-point: 1 * 0.5.
    truth = [gt([A, [1, 0, 11, 10]], ["cat", "cat"])]
    found = [dets([A, [0.2, 0, 10.2, 10]], [0.9, 0.8], ["cat", "cat"])]
    cat = evaluate_detections(found, truth)["cat"]
    assert (cat.true_positives, cat.false_positives) == (1, 1)
    assert cat.ap == pytest.approx(6 / 11)
    assert evaluate_detections(found, truth, metric="allpoint")["cat"].ap == pytest.approx(0.5)


def test_lower_scored_better_box_does_not_steal_the_match():
    # Ranked: a 0.6-IoU box at score 0.9 (TP), then the exact box at 0.8 (duplicate FP).
    truth = [gt([A], ["cat"])]
    loose = [0, 0, 10, 10 / 0.6]  # IoU 0.6 with A
    cat = evaluate_detections([dets([A, loose], [0.8, 0.9], ["cat", "cat"])], truth)["cat"]
    np.testing.assert_allclose(cat.precision, [1, 0.5])
    np.testing.assert_allclose(cat.scores, [0.9, 0.8], rtol=1e-6)


def test_iou_threshold_is_strict_and_configurable():
    # [0,0,10,20] against A: intersection 100, union 200 -> IoU exactly 0.5, not > 0.5.
    truth = [gt([A], ["cat"])]
    found = [dets([[0, 0, 10, 20]], [0.9], ["cat"])]
    assert evaluate_detections(found, truth)["cat"].ap == 0.0
    assert evaluate_detections(found, truth, iou_threshold=0.49)["cat"].ap == pytest.approx(1.0)
    assert evaluate_detections(found, truth, iou_threshold=0.49).iou_threshold == 0.49


def test_other_class_ground_truth_never_matches():
    truth = [gt([A], ["dog"])]
    result = evaluate_detections([dets([A], [0.9], ["cat"])], truth, ["cat", "dog"])
    assert result["cat"].false_positives == 1 and math.isnan(result["cat"].ap)
    assert result["dog"].ap == 0.0 and result["dog"].npos == 1


def test_classes_without_ground_truth_are_reported_and_excluded():
    # cat: TP only -> AP 1. dog: no ground truth but a detection -> NaN. bird: only a difficult object -> NaN.
    # horse: one object and no detection -> AP 0 (counts in the mAP). mAP = (1 + 0) / 2.
    truth = [gt([A, B], ["cat", "bird"], [False, True]), gt([A], ["horse"])]
    found = [dets([A, B], [0.9, 0.8], ["cat", "dog"]), dets()]
    result = evaluate_detections(found, truth, ["cat", "dog", "bird", "horse", "sheep"])
    assert [c.name for c in result.classes] == ["cat", "dog", "bird", "horse", "sheep"]
    assert result.classes_without_ground_truth == ["dog", "bird", "sheep"]
    assert result["cat"].ap == 1.0 and result["horse"].ap == 0.0
    assert all(math.isnan(result[n].ap) for n in ("dog", "bird", "sheep"))
    assert result["dog"].false_positives == 1 and result["bird"].num_difficult == 1
    assert result.map == pytest.approx(0.5)
    summary = json.loads(json.dumps(result.to_dict(curves=True)))  # JSON-safe: NaN written as null
    assert summary["map"] == pytest.approx(0.5) and summary["classes"][1]["ap"] is None
    assert summary["classes"][1]["recall"] == [None]
    assert summary["classes_without_ground_truth"] == ["dog", "bird", "sheep"]


def test_images_without_detections_still_count_their_objects():
    # Two images with one cat each; only the first has a (correct) detection -> recall 1/2 at precision 1.
    # 11-point: thresholds 0..0.5 -> 6/11. all-point: 0.5.
    truth = [gt([A], ["cat"]), gt([B], ["cat"]), gt()]
    found = [dets([A], [0.9], ["cat"]), dets(), dets()]
    assert evaluate_detections(found, truth)["cat"].ap == pytest.approx(6 / 11)
    assert evaluate_detections(found, truth, metric="allpoint")["cat"].ap == pytest.approx(0.5)
    assert evaluate_detections(found, truth).num_images == 3


def test_no_detections_at_all_and_no_classes():
    result = evaluate_detections([dets()], [gt([A], ["cat"])])
    assert result["cat"].ap == 0.0 and len(result["cat"].precision) == 0
    empty = evaluate_detections([dets()], [gt()])
    assert empty.classes == () and math.isnan(empty.map)


def test_detector_class_order_is_mapped_by_name():
    truth = [gt([A, B], ["cat", "dog"])]
    found = Detections(np.array([B, A], np.float32), np.array([0.9, 0.8], np.float32), np.array([0, 1]), ("dog", "cat"))
    result = evaluate_detections([found], truth, ["cat", "dog"])
    assert result["cat"].ap == 1.0 and result["dog"].ap == 1.0


def test_invalid_inputs():
    with pytest.raises(ValueError, match="unknown AP metric"):
        evaluate_detections([dets()], [gt()], metric="101point")
    with pytest.raises(ValueError, match="2 detection lists for 1"):
        evaluate_detections([dets(), dets()], [gt()])
    with pytest.raises(ValueError, match=r"ground-truth classes \['dog'\]"):
        evaluate_detections([dets()], [gt([A], ["dog"])], ["cat"])
    with pytest.raises(ValueError, match=r"detected classes \['dog'\]"):
        evaluate_detections([dets([A], [0.5], ["dog"])], [gt()], ["cat"])
    with pytest.raises(ValueError, match="iou_threshold"):
        evaluate_detections([dets()], [gt()], iou_threshold=1.0)


def test_voc_ap_direct():
    # Precision 1 up to recall 0.3 exactly then nothing: the devkit's arange threshold 0.30000000000000004 is
    # just above 0.3, so only t = 0, 0.1, 0.2 count -> 3/11 (the devkit's exact behaviour).
    assert voc_ap(np.array([0.1, 0.2, 0.3]), np.ones(3)) == pytest.approx(3 / 11)
    assert voc_ap(np.array([0.1, 0.2, 0.3]), np.ones(3), "allpoint") == pytest.approx(0.3)
    assert voc_ap(np.zeros(0), np.zeros(0)) == 0.0
    assert voc_ap(np.zeros(0), np.zeros(0), "allpoint") == 0.0


# --- cross-check against the devkit's loop ----------------------------------------------------------------------


def devkit_voc_ap(rec, prec, use_07_metric):
    """voc_ap from the Python devkit port (py-faster-rcnn voc_eval.py), loops and all."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def devkit_voc_eval(images, classname, ovthresh, use_07_metric):
    """voc_eval's per-detection loop on 1-based inclusive boxes with the devkit's "+1" widths.

    ``images`` is a list of (gt_boxes, gt_names, gt_difficult, det_boxes, det_scores, det_names), all 1-based.
    Returns (ap, rec, prec, counted) where counted marks the ranked detections that were TP or FP.
    """
    class_recs, npos = {}, 0
    image_ids, confidence, boxes = [], [], []
    for index, (gt_boxes, gt_names, gt_difficult, det_boxes, det_scores, det_names) in enumerate(images):
        keep = [n == classname for n in gt_names]
        difficult = np.array(gt_difficult, bool)[keep]
        npos += int(np.sum(~difficult))
        class_recs[index] = {"bbox": gt_boxes[keep], "difficult": difficult, "det": [False] * int(np.sum(keep))}
        for box, score, name in zip(det_boxes, det_scores, det_names):
            if name == classname:
                image_ids.append(index)
                confidence.append(score)
                boxes.append(box)
    confidence, BB = np.array(confidence), np.array(boxes).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence)
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = (
                (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0)
                - inters
            )
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    counted = (tp + fp) > 0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return devkit_voc_ap(rec, prec, use_07_metric), rec, prec, counted


def random_problem(rng, num_images=60, classes=("cat", "dog", "person", "bus")):
    """Integer 1-based ground truth with difficult flags; jittered true, duplicate and random float detections."""
    images = []
    for _ in range(num_images):
        n = int(rng.integers(0, 5))
        xy = rng.integers(1, 150, (n, 2))
        wh = rng.integers(8, 80, (n, 2))
        gt_boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float64)
        gt_names = list(rng.choice(classes, n))
        gt_difficult = list(rng.random(n) < 0.2)
        det_boxes, det_names = [], []
        for box, name in zip(gt_boxes, gt_names):
            for _ in range(int(rng.integers(0, 3))):  # 0 = missed, 2 = a duplicate
                det_boxes.append(box + rng.normal(0, 4, 4))
                det_names.append(name if rng.random() < 0.9 else rng.choice(classes))
        for _ in range(int(rng.integers(0, 6))):  # background false positives
            x, y = rng.uniform(1, 180, 2)
            det_boxes.append(np.array([x, y, x + rng.uniform(5, 60), y + rng.uniform(5, 60)]))
            det_names.append(rng.choice(classes))
        det_boxes = np.array(det_boxes, np.float64).reshape(-1, 4)
        det_scores = rng.random(len(det_boxes)).astype(np.float32)
        images.append((gt_boxes, gt_names, gt_difficult, det_boxes, det_scores, det_names))
    return images


def to_ours(images):
    """The same problem in our 0-based convention: xmin - 1, ymin - 1 (as ssd_ros.evaluation.voc converts)."""
    shift = np.array([1.0, 1.0, 0.0, 0.0])
    truths, found = [], []
    for gt_boxes, gt_names, gt_difficult, det_boxes, det_scores, det_names in images:
        truths.append(gt(gt_boxes - shift, gt_names, gt_difficult))
        found.append(dets(det_boxes - shift, det_scores, det_names) if len(det_names) else dets())
    return found, truths


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("iou_threshold", [0.5, 0.7])
def test_matches_devkit_reference_on_random_data(seed, iou_threshold):
    rng = np.random.default_rng(seed)
    images = random_problem(rng)
    found, truths = to_ours(images)
    for metric, use_07 in (("11point", True), ("allpoint", False)):
        result = evaluate_detections(found, truths, iou_threshold=iou_threshold, metric=metric)
        assert [c.name for c in result.classes] == ["bus", "cat", "dog", "person"]
        checked = 0
        for c in result.classes:
            ap, rec, prec, counted = devkit_voc_eval(images, c.name, iou_threshold, use_07)
            assert c.ap == pytest.approx(ap, abs=1e-12), (metric, c.name)
            # Our curves are the devkit's with the ignored (difficult-matched) detections left out.
            np.testing.assert_allclose(c.recall, rec[counted])
            np.testing.assert_allclose(c.precision, prec[counted])
            assert c.ignored == int(np.sum(~counted))
            checked += c.ignored
        assert 0 < result.map < 1
    assert checked > 0  # the random problems do exercise difficult matches


def test_matched_fraction_pairs_detections_one_to_one_by_class_and_iou():
    names = ("cat", "dog")

    def dets(boxes, scores, labels):
        return Detections(np.array(boxes, np.float32), np.array(scores, np.float32), np.array(labels), names)

    reference = dets([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], [0.9, 0.8, 0.7], [0, 0, 1])
    # The first matches; the second's only overlap is below 0.5; the third's partner has the wrong class.
    other = dets([[0, 0, 10, 11], [25, 25, 35, 35], [0, 0, 10, 10]], [0.5, 0.5, 0.5], [0, 0, 0])
    assert matched_fraction([reference], [other]) == pytest.approx(1 / 3)
    # One partner cannot serve two reference detections.
    twice = dets([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [0, 0])
    assert matched_fraction([twice], [dets([[0, 0, 10, 10]], [0.9], [0])]) == 0.5
    assert matched_fraction([twice], [twice]) == 1.0
    assert matched_fraction([Detections.empty(names)], [twice]) == 1.0


def test_matched_fraction_compares_class_names_not_label_indices():
    # Detections.from_named lists classes in the order they arrive, so "dog" is label 1 on one side and 0 on
    # the other: the same box of the same class must match, and the same label index of another class must not.
    reference = Detections.from_named([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], ["cat", "dog"])
    assert matched_fraction([reference], [Detections.from_named([[20, 20, 30, 30]], [0.7], ["dog"])]) == 0.5
    swapped = Detections.from_named([[0, 0, 10, 10], [20, 20, 30, 30]], [0.7, 0.6], ["dog", "cat"])
    assert matched_fraction([reference], [swapped]) == 0.0
    # At iou=0 a same-class partner without overlap counts, one of another class (same class list) does not.
    names = ("cat", "dog")
    cat = Detections(np.array([[0, 0, 10, 10]], np.float32), np.array([0.9], np.float32), np.array([0]), names)
    for label, expected in ((0, 1.0), (1, 0.0)):
        apart = Detections(
            np.array([[50, 50, 60, 60]], np.float32), np.array([0.5], np.float32), np.array([label]), names
        )
        assert matched_fraction([cat], [apart], iou=0.0) == expected
