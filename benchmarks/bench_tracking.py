"""Tracker cost per frame (ssd_ros.control.tracking) against the detector's own time per frame, on one core.

Synthetic scenes of N objects (10, 30, 100: the detector node's max_detections default) walking at constant
velocity in a 640x480 image, with box noise, 5 % missed detections and scores spread over [0.1, 1], tracked at
10 Hz for --frames frames; the time of each ``Tracker.update`` after the first 10 frames (tracks established).
The reference is a ``Detector`` call (SSDlite320 and SSD300, random weights: the cost does not depend on them) on
a 640x480 frame, torch with 1 thread. Writes docs/benchmarks/tracking.md.

    python benchmarks/bench_tracking.py [--frames 300] [--out docs/benchmarks/tracking.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

# One core: numpy's BLAS and torch must not spread over the others (set before they load).
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from ssd_ros.control.tracking import Tracker  # noqa: E402
from ssd_ros.vision.checkpoint import save_checkpoint  # noqa: E402
from ssd_ros.vision.detections import Detections  # noqa: E402
from ssd_ros.vision.detector import Detector  # noqa: E402
from ssd_ros.vision.model import VOC_CLASSES  # noqa: E402
from ssd_ros.vision.model_card import ModelCard  # noqa: E402

WIDTH, HEIGHT, PERIOD_S = 640, 480, 0.1
WARMUP_FRAMES = 10
REPO = Path(__file__).resolve().parents[1]


def scene(objects: int, frames: int, seed: int = 0) -> list[Detections]:
    """Detections of ``objects`` boxes moving at constant velocity (bouncing off the image edges)."""
    rng = np.random.default_rng(seed)
    size = rng.uniform([15, 40], [80, 200], (objects, 2))
    position = rng.uniform([0, 0], [WIDTH, HEIGHT], (objects, 2))
    velocity = rng.uniform(-60, 60, (objects, 2))  # px/s
    classes = ("person", "car")
    labels = rng.integers(0, 2, objects)
    sequence = []
    for _ in range(frames):
        position += velocity * PERIOD_S
        bounce = (position < 0) | (position > [WIDTH, HEIGHT])
        velocity[bounce] *= -1
        boxes = np.concatenate([position - size / 2, position + size / 2], axis=1) + rng.normal(0, 2, (objects, 4))
        seen = rng.random(objects) >= 0.05
        scores = rng.uniform(0.1, 1.0, objects)
        sequence.append(
            Detections(
                boxes[seen].astype(np.float32), scores[seen].astype(np.float32), labels[seen].astype(np.int64), classes
            )
        )
    return sequence


def time_tracker(objects: int, frames: int) -> np.ndarray:
    """Seconds per ``Tracker.update`` over a scene, tracks established first."""
    sequence = scene(objects, frames)
    tracker = Tracker()
    times = []
    for k, detections in enumerate(sequence):
        start = time.perf_counter()
        tracker.update(detections, k * PERIOD_S)
        if k >= WARMUP_FRAMES:
            times.append(time.perf_counter() - start)
    return np.asarray(times)


def time_detector(architecture: str, repeat: int) -> float:
    """Median seconds of a Detector call on a 640x480 frame (torch, 1 thread)."""
    torch.manual_seed(0)
    card = ModelCard.for_architecture(architecture, VOC_CLASSES, dataset="none (benchmark)")
    with tempfile.TemporaryDirectory() as folder:
        path = save_checkpoint(Path(folder) / "model.pt", card.build_model(), card)
        detector = Detector.from_checkpoint(path, device="cpu", num_threads=1, score_threshold=0.3)
    rgb = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    detector(rgb)  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        detector(rgb)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    """Run the benchmark, print the table and write the results page."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300, help="frames per scene")
    parser.add_argument("--repeat", type=int, default=5, help="Detector calls timed per model")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "tracking.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tracker_ms = {}
    for objects in tqdm((10, 30, 100), desc="tracker scenes"):
        tracker_ms[objects] = time_tracker(objects, args.frames) * 1e3
    detector_ms = {arch: time_detector(arch, args.repeat) * 1e3 for arch in ("ssdlite320_mobilenet_v3", "ssd300_vgg16")}
    lines = [
        "# Tracker cost per frame",
        "",
        f"`python benchmarks/bench_tracking.py` on {platform.machine()}, {os.cpu_count()} cores (1 used), "
        f"Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}. "
        f"{args.frames} frames per scene at 10 Hz, the first {WARMUP_FRAMES} not timed. Target: < 2 ms at 100 "
        f"detections. Load average {os.getloadavg()[0]:.1f} at the end: on a shared machine the p95 and max are "
        "other processes taking the core (the median is the tracker's cost).",
        "",
        "| detections per frame | tracker median (ms) | p95 (ms) | max (ms) | "
        + " | ".join(f"share of a {arch} Detector call" for arch in detector_ms)
        + " |",
        "|---|---|---|---|" + "---|" * len(detector_ms),
    ]
    for objects, ms in tracker_ms.items():
        median = float(np.median(ms))
        shares = " | ".join(f"{100 * median / d:.2f} %" for d in detector_ms.values())
        lines.append(f"| {objects} | {median:.3f} | {np.percentile(ms, 95):.3f} | {ms.max():.3f} | {shares} |")
    lines += [
        "",
        "Detector call (640x480 frame, torch fp32, 1 thread, median of "
        f"{args.repeat}): " + ", ".join(f"{arch} {ms:.0f} ms" for arch, ms in detector_ms.items()) + ".",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
