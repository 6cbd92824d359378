"""Evaluate a detector checkpoint offline on a camera rosbag2 (MCAP or sqlite3), without a ROS graph.

Every frame goes through the live nodes' path (detector, tracker, follower ticked at ``--control-rate-hz`` on
bag time; see :mod:`ssd_ros.tools.bag_eval.replay`): nothing is dropped and nothing depends on wall time.

The output bag holds the input's topics (the image topic untouched) plus ``/detections``
(header = image header), ``/image_annotated`` (rgb8) and ``/cmd_vel``, all at the image's bag time,
for replay in RViz or Foxglove. The report (Markdown on stdout, JSON in the output folder) gives
frames, processing rate, per-frame model latency percentiles, detections per class, the tracker's tracks
(``Detection2D.id`` in the output, as the node's ``tracking`` writes it; ``--no-tracking`` leaves them empty)
and, with ``--ground-truth``, the PASCAL VOC AP table. See ``docs/bags.md``.

Exit status: 0 done; 1 the bag is damaged (what was read before the fault is evaluated and written);
2 bad input (missing bag or topic, ambiguous topic, bad checkpoint or ground truth); 130 Ctrl-C during the run
(the frames evaluated so far are written, with a report that says it was interrupted).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ssd_ros.cli import add_inference_arguments, positive_int
from ssd_ros.evaluation.voc_metric import METRICS
from ssd_ros.tools.bag_eval.config import EvalConfig, follower_options, load_detector, make_tracker
from ssd_ros.tools.bag_eval.ground_truth import check_ground_truth, check_stamps, load_ground_truth
from ssd_ros.tools.bag_eval.replay import ANNOTATED_TOPIC, Evaluation, find_camera_info, find_image_topic, stream
from ssd_ros.tools.bag_eval.report import format_report, make_report
from ssd_ros.tools.bagio import STORAGE_PLUGINS, BagToolError, check_new_bag, open_bag, open_writer
from ssd_ros.vision.detector import LIVE_SETTINGS

REPORT_NAME = "bag_eval_report.json"
INTERRUPTED = 130  # the shell's status of a program ended by SIGINT


def report_path(config: EvalConfig) -> Path:
    """Where the JSON report goes: ``--report``, or ``<out>/bag_eval_report.json``.

    ``--report``'s missing folders are created when it is written; checked here, before the run, that they can
    be, so a long evaluation never ends without its report (``BagToolError`` otherwise).
    """
    if config.report is None:
        return config.out_bag / REPORT_NAME
    path = config.report
    if path.is_dir():
        raise BagToolError(f"--report {path} is a folder: name the file, e.g. {path / REPORT_NAME}")
    existing = next(folder for folder in path.absolute().parents if folder.exists())
    if not existing.is_dir():
        raise BagToolError(f"--report {path}: {existing} is a file, so no folder can be made for the report")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BagToolError(f"--report {path}: no permission to write in {existing}")
    return path


def run(config: EvalConfig) -> tuple[dict, int]:
    """Evaluate ``config.bag``; returns the JSON report and the exit status.

    Cheap checks come first (ground truth, the bag, its image topic and the annotations' stamps), so a wrong
    path fails before the model is loaded.
    """
    truth = load_ground_truth(config)
    with open_bag(config.bag) as (reader, salvage_note):
        image_conn = find_image_topic(reader.connections, config.topic)
        camera_info_conn = find_camera_info(reader.connections, config.camera_info_topic, image_conn.topic)
        check_stamps(config, truth, reader, image_conn)
        check_new_bag(config.out_bag)
        detector = load_detector(config)
        follower = follower_options(config, detector.class_names)
        tracker = make_tracker(config)  # a bad --track-param fails before any output
        check_ground_truth(config, truth, detector.class_names, image_conn, bool(salvage_note))
        detector.warmup()  # one-time set-up cost stays out of the latency figures
        with open_writer(config.out_bag, config.storage) as writer:
            inputs = (image_conn, camera_info_conn)
            evaluation = Evaluation(config, follower, reader, writer, detector, inputs, truth, tracker)
            wall_s, fault, interrupted = stream(config, evaluation, reader, image_conn)
    fault = "; ".join(note for note in (salvage_note, fault) if note) or None
    status = INTERRUPTED if interrupted else 1 if fault else 0
    return make_report(config, detector, image_conn, evaluation, wall_s, fault), status


def parse_args(argv: list[str] | None) -> EvalConfig:
    """Command line of ``bag_eval``."""
    parser = argparse.ArgumentParser(prog="bag_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("bag", type=Path, help="input rosbag2 folder, or a single .mcap / .db3 file")
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="SSD checkpoint (.pt) or export (.onnx, OpenVINO .xml)"
    )
    parser.add_argument("--topic", help="image topic (default: the bag's only Image/CompressedImage topic)")
    parser.add_argument("--out", type=Path, help="output bag folder, must not exist (default: <bag>_eval)")
    parser.add_argument("--storage", choices=sorted(STORAGE_PLUGINS), default="mcap", help="output storage format")
    parser.add_argument("--report", type=Path, help="JSON report path (default: <out>/bag_eval_report.json)")
    same = "as the detector node (default %(default)s)"
    parser.add_argument("--score-threshold", type=float, default=LIVE_SETTINGS["score_threshold"], help=same)
    parser.add_argument("--nms-iou", type=float, default=LIVE_SETTINGS["nms_iou"], help=same)
    parser.add_argument("--max-detections", type=int, default=LIVE_SETTINGS["max_detections"], help=same)
    parser.add_argument("--class-filter", nargs="+", help="report only these classes")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    add_inference_arguments(parser)
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=1,
        help="frames per model call (1 = exactly the node's per-frame call)",
    )
    parser.add_argument("--max-frames", type=positive_int, help="stop after this many frames")
    parser.add_argument("--no-annotated", dest="annotated", action="store_false", help=f"skip {ANNOTATED_TOPIC}")
    parser.add_argument(
        "--control-rate-hz", type=float, help="follower timer rate on bag time (default: rate_hz of the config)"
    )
    parser.add_argument(
        "--follow-config",
        type=Path,
        nargs="+",
        default=[],
        help="the follower node's parameters files, a later one winning as with --params-file: e.g. "
        "config/rover.yaml config/follower.yaml",
    )
    parser.add_argument("--follow-classes", nargs="+", help="classes the follower follows (default: FollowParams)")
    parser.add_argument(
        "--camera-info-topic",
        help="the follower's sensor_msgs/CameraInfo (default: camera_info next to the image topic, if the bag has it)",
    )
    parser.add_argument(
        "--follow-param", action="append", default=[], metavar="NAME=VALUE", help="override a FollowParams field"
    )
    parser.add_argument(
        "--twist-stamped", action="store_true", help="write TwistStamped (default: twist_stamped of the config)"
    )
    parser.add_argument(
        "--no-tracking", dest="tracking", action="store_false", help="no tracker: Detection2D.id left empty"
    )
    parser.add_argument(
        "--track-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="tracker setting, as the detector node's track_* parameters (e.g. track_high_score=0.4)",
    )
    parser.add_argument(
        "--gt-tracks",
        type=Path,
        help="ground-truth tracks (MOTChallenge text: frame from 1, id, left, top, width, height): id switches",
    )
    parser.add_argument("--ground-truth", type=Path, help="folder of VOC XML annotations, one per frame")
    parser.add_argument(
        "--gt-match",
        choices=["auto", "index", "stamp"],
        default="auto",
        help="index: sorted XML files are frames 0, 1, ...; stamp: <stamp_ns>.xml; auto: stamp if all are numbers",
    )
    parser.add_argument("--metric", choices=METRICS, default="11point", help="VOC AP interpolation")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU threshold of a true positive")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return EvalConfig.from_namespace(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bag_eval`` executable; returns the exit status."""
    config = parse_args(argv)
    try:
        path = report_path(config)
        report, status = run(config)
    except BagToolError as exc:
        print(f"bag_eval: error: {exc}", file=sys.stderr)
        return 2
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print(f"\nreport: {path}")
    if report["fault"]:
        print(f"bag_eval: error: {report['fault']}", file=sys.stderr)
    return status
