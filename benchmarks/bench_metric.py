"""Time the VOC metric on a VOC2007-test-sized synthetic problem.

4952 images, 20 classes, about 3 objects per image (VOC2007 test has 14976 in 4952 images, 10% difficult)
and 200 detections per image (the usual evaluation cap): jittered copies of the objects plus random boxes,
random scores. Prints the wall time of ``evaluate_detections`` for both interpolations (best of --repeat).

    python benchmarks/bench_metric.py [--images 4952] [--detections 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ssd_ros.evaluation.voc import VocAnnotation
from ssd_ros.evaluation.voc_metric import evaluate_detections
from ssd_ros.vision.detections import Detections

CLASSES = tuple(f"class{i:02d}" for i in range(20))


def make_problem(num_images: int, detections_per_image: int, seed: int = 0):
    """Synthetic ground truth and detections on 500x375 images (VOC's typical size)."""
    rng = np.random.default_rng(seed)
    detections, truths = [], []
    for _ in range(num_images):
        n = int(rng.integers(1, 6))
        xy = rng.uniform(0, 400, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(10, 200, (n, 2))], axis=1).clip(0, [500, 375, 500, 375])
        labels = rng.integers(0, len(CLASSES), n)
        truths.append(
            VocAnnotation(
                "x.jpg", 500, 375, boxes.astype(np.float32), [CLASSES[i] for i in labels], rng.random(n) < 0.1
            )
        )
        near = rng.integers(0, n, detections_per_image // 4)  # a quarter near objects, mostly the right class
        near_boxes = boxes[near] + rng.normal(0, 10, (len(near), 4))
        near_labels = np.where(rng.random(len(near)) < 0.8, labels[near], rng.integers(0, len(CLASSES), len(near)))
        rest = detections_per_image - len(near)
        xy = rng.uniform(0, 450, (rest, 2))
        rand_boxes = np.concatenate([xy, xy + rng.uniform(5, 150, (rest, 2))], axis=1)
        detections.append(
            Detections(
                np.concatenate([near_boxes, rand_boxes]).astype(np.float32),
                rng.random(detections_per_image).astype(np.float32),
                np.concatenate([near_labels, rng.integers(0, len(CLASSES), rest)]).astype(np.int64),
                CLASSES,
            )
        )
    return detections, truths


def main() -> None:
    """Run the benchmark and print the timings."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4952)
    parser.add_argument("--detections", type=int, default=200, help="detections per image")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    detections, truths = make_problem(args.images, args.detections)
    total = sum(len(d) for d in detections)
    print(f"{args.images} images, {len(CLASSES)} classes, {total} detections, {sum(len(t) for t in truths)} objects")
    for metric in ("11point", "allpoint"):
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            result = evaluate_detections(detections, truths, CLASSES, metric=metric)
            times.append(time.perf_counter() - start)
        best, mean = min(times), float(np.mean(times))
        print(f"{metric:>8}: best {best:.3f} s, mean {mean:.3f} s over {args.repeat} runs (mAP {result.map:.4f})")


if __name__ == "__main__":
    main()
