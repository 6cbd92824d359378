"""Offline bag evaluation rate against the live detector's per-frame rate, same machine, same run.

A camera bag is made from ``../shared/data/picar_camera/video/lane_drive.avi`` (320x240, 20 fps) with
``make_bag``, in each requested form (raw ``sensor_msgs/Image`` and/or JPEG ``CompressedImage``), then:

(a) the live path's work per frame, one frame at a time: deserialise the stored message, decode it with
    :mod:`ssd_ros.ros.images` and call the core ``Detector`` (what the ``detector`` node does per frame,
    minus DDS), over the bag's frames -> frames/s; this bounds the node's processed rate;
(b) ``bag_eval`` on the same bag, in process: everything of (a) plus drawing, serialising and writing the
    output bag (images, detections, annotated images, cmd_vel) -> frames/s, for each ``--batch-sizes``.

(a) is measured before and after the (b) runs and averaged, so load drift on a shared machine hits both.
The ratio (b) / (a) is the figure of merit: 1.0 means offline evaluation costs nothing beyond inference.

    . scripts/env.sh && python benchmarks/bench_bag_eval.py                   # SSD300, 60 frames
    python benchmarks/bench_bag_eval.py --architecture ssdlite320_mobilenet_v3 --frames 200 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from rosbags.rosbag2 import Reader

from ssd_ros.ros.images import compressed_msg_to_rgb, image_msg_to_rgb
from ssd_ros.tools import bag_eval, make_bag
from ssd_ros.tools.bagio import COMPRESSED_IMAGE_TYPE, deserialize
from ssd_ros.vision.checkpoint import save_checkpoint
from ssd_ros.vision.detector import Detector
from ssd_ros.vision.model import VOC_CLASSES
from ssd_ros.vision.model_card import ModelCard

REPO_ROOT = Path(__file__).resolve().parents[1]
VIDEO = REPO_ROOT.parent / "shared" / "data" / "picar_camera" / "video" / "lane_drive.avi"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", default="ssd300_vgg16", help="model to time (default: %(default)s)")
    parser.add_argument("--checkpoint", type=Path, help="use this checkpoint instead of a random-init model")
    parser.add_argument("--frames", type=int, default=60, help="frames of the video to use (max 222)")
    parser.add_argument("--kinds", nargs="+", choices=["raw", "jpeg"], default=["raw", "jpeg"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: torch's); 1 is steadier on a shared machine"
    )
    return parser.parse_args()


def live_path_rate(detector: Detector, bag: Path) -> float:
    """Frames/s of deserialise + decode + Detector, one frame at a time, over the bag's frames."""
    with Reader(bag) as reader:
        messages = [(c.msgtype, bytes(raw)) for c, _, raw in reader.messages()]
    start = time.perf_counter()
    for msgtype, raw in messages:
        msg = deserialize(raw, msgtype)
        rgb = compressed_msg_to_rgb(msg) if msgtype == COMPRESSED_IMAGE_TYPE else image_msg_to_rgb(msg)
        detector(rgb)
    return len(messages) / (time.perf_counter() - start)


def bag_eval_rate(bag: Path, checkpoint: Path, out: Path, batch_size: int, device: str) -> dict:
    """bag_eval's report for one run (its stdout is swallowed)."""
    argv = [str(bag), "--checkpoint", str(checkpoint), "--out", str(out), "--device", device, "--quiet"]
    argv += ["--batch-size", str(batch_size)]
    with contextlib.redirect_stdout(io.StringIO()):
        status = bag_eval.main(argv)
    if status != 0:
        raise SystemExit(f"bag_eval failed with status {status}")
    return json.loads((out / "bag_eval_report.json").read_text())


def main() -> int:
    args = parse_args()
    if not VIDEO.exists():
        raise SystemExit(f"{VIDEO} not found (../shared/data is not part of a fresh clone)")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_bag_eval_") as tmp:
        tmp = Path(tmp)
        checkpoint = args.checkpoint
        if checkpoint is None:
            torch.manual_seed(0)
            card = ModelCard.for_architecture(args.architecture, VOC_CLASSES, dataset="random init (benchmark)")
            checkpoint = save_checkpoint(tmp / "model.pt", card.build_model(), card)
        detector = Detector.from_checkpoint(checkpoint, device=args.device)
        detector.warmup((240, 320))
        rows = []
        for kind in args.kinds:
            bag = tmp / f"bag_{kind}"
            argv = ["--video", str(VIDEO), "--out", str(bag), "--storage", args.storage, "--start-time-s", "0"]
            argv += ["--max-frames", str(args.frames)] + (["--compressed"] if kind == "jpeg" else [])
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                make_bag.main(argv)
            before = live_path_rate(detector, bag)
            reports = {
                b: bag_eval_rate(bag, checkpoint, tmp / f"eval_{kind}_{b}", b, args.device) for b in args.batch_sizes
            }
            after = live_path_rate(detector, bag)
            live = (before + after) / 2
            for batch, report in reports.items():
                rows.append((kind, batch, live, report["frames_per_s"], report["model_latency_ms"]["p50"]))
    lines = [
        f"Bag evaluation vs live per-frame rate: {detector.card.architecture}, {args.frames} frames of "
        f"lane_drive.avi (320x240), {args.storage}, device {detector.device}, torch threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}",
        "",
        "| images | batch | live path (frames/s) | bag_eval (frames/s) | ratio | model p50 (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, batch, live, offline, p50 in rows:
        lines.append(f"| {kind} | {batch} | {live:.2f} | {offline:.2f} | {offline / live:.2f} | {p50:.1f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
