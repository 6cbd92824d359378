"""The report of a ``bag_eval`` run: a JSON-ready dict and its Markdown.

Frames, rates, model latency, detections per class, the follower's commands, tracks and the AP table.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ssd_ros.evaluation.voc_metric import evaluate_detections
from ssd_ros.evaluation.voc_report import format_ap_table
from ssd_ros.tools.bag_eval.config import EvalConfig
from ssd_ros.tools.bag_eval.replay import Evaluation
from ssd_ros.vision.detector import Detector


def _percentiles_ms(values: list[float]) -> dict:
    if not values:
        return {}
    ms = np.asarray(values) * 1e3
    return {
        "mean": float(ms.mean()),
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
        "max": float(ms.max()),
    }


def make_report(config: EvalConfig, detector: Detector, image_conn, evaluation: Evaluation, wall_s: float, fault):
    """The JSON-ready report of a run."""
    stats = evaluation.stats
    commands = stats.commands
    report = {
        "bag": str(config.bag),
        "output_bag": str(config.out_bag),
        "image_topic": image_conn.topic,
        "image_type": image_conn.msgtype,
        "checkpoint": str(config.checkpoint),
        "architecture": detector.card.architecture,
        "device": str(detector.device),
        "backend": f"{detector.backend} {detector.precision} x{detector.num_threads} threads",
        "class_names": list(detector.class_names),
        "score_threshold": detector.score_threshold,
        "batch_size": config.batch_size,
        "frames": stats.frames,
        "processed_frames": stats.frames - stats.bad_frame_count,
        "bad_frames": stats.bad_frame_count,
        "bad_frame_examples": stats.bad_frames,
        "wall_s": wall_s,
        "frames_per_s": stats.frames / wall_s if wall_s > 0 else None,
        "model_latency_ms": _percentiles_ms(stats.model_s),
        "model_frames_per_s": len(stats.model_s) / sum(stats.model_s) if stats.model_s else None,
        "detections": sum(stats.per_class.values()),
        "detections_per_class": {name: stats.per_class.get(name, 0) for name in detector.class_names},
        "cmd_vel": {
            "messages": len(commands),
            "control_rate_hz": evaluation.follower.rate_hz,
            "type": evaluation.cmd_conn.msgtype,
            "moving": sum(1 for c in commands if c.linear_mps != 0.0 or c.angular_radps != 0.0),
            "max_abs_linear_mps": max((abs(c.linear_mps) for c in commands), default=0.0),
            "max_abs_angular_radps": max((abs(c.angular_radps) for c in commands), default=0.0),
            "follower_counters": dict(evaluation.loop.controller.counters) if evaluation.loop else {},
            "camera": _camera_report(evaluation),
        },
        "tracking": _tracking_report(evaluation),
        "replaced_topics": evaluation.replaced,
        "ground_truth": None,
        "fault": fault,
    }
    truth = evaluation.truth
    if truth.annotations is not None:
        pairs = stats.evaluated
        result = evaluate_detections(
            [d for d, _ in pairs],
            [a for _, a in pairs],
            detector.class_names,
            iou_threshold=config.iou,
            metric=config.metric,
        )
        report["ground_truth"] = {
            "folder": str(config.ground_truth),
            "match": truth.match,
            "annotations": len(truth.annotations),
            "frames_evaluated": len(pairs),
            **result.to_dict(),
        }
        report["ap_table"] = format_ap_table(result)
    return report


def _tracking_report(evaluation: Evaluation) -> dict | None:
    """Tracks (confirmed ids), their lengths in frames and the share of detections with an id; None untracked."""
    if evaluation.tracker is None:
        return None
    stats = evaluation.stats
    lengths = sorted(stats.track_frames.values())
    detections = sum(stats.per_class.values())
    return {
        "params": dataclasses.asdict(evaluation.tracker.params),
        "tracks": len(lengths),
        "track_length_frames": {
            "mean": float(np.mean(lengths)) if lengths else 0.0,
            "median": float(np.median(lengths)) if lengths else 0.0,
            "max": lengths[-1] if lengths else 0,
        },
        "tracked_detections": stats.tracked_detections,
        "tracked_fraction": stats.tracked_detections / detections if detections else 0.0,
        "ground_truth": None if evaluation.truth.tracks is None else _gt_tracks_report(evaluation),
    }


def _gt_tracks_report(evaluation: Evaluation) -> dict:
    """Identity switches against ``--gt-tracks`` (true objects matched at ``--iou`` to detections with an id)."""
    truth = evaluation.truth.tracks
    return {
        "file": str(evaluation.config.gt_tracks),
        "objects": len({o for ids, _ in truth.values() for o in ids}),
        "boxes": sum(len(ids) for ids, _ in truth.values()),
        "matched_with_id": evaluation.id_switches.matched,
        "id_switches": evaluation.id_switches.switches,
    }


def _camera_report(evaluation: Evaluation) -> dict:
    """Which camera model the follower's bearing came from (the last one in use)."""
    camera = evaluation.loop.controller.camera if evaluation.loop else None
    info = evaluation.camera_info_conn
    return {
        "source": "CameraInfo" if evaluation.camera is not None else "configured field of view",
        "camera_info_topic": info.topic if info is not None else None,
        "bad_camera_infos": evaluation.bad_camera_infos,
        **({"width_px": camera.width_px, "height_px": camera.height_px} if camera else {}),
        **({"fx_px": camera.fx_px, "cx_px": camera.cx_px} if camera else {}),
    }


def format_report(report: dict) -> str:
    """The report as Markdown."""

    def number(value, fmt=".1f"):
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

    latency = report["model_latency_ms"]
    lines = [
        f"# bag_eval: {report['bag']}",
        "",
        f"- image topic: `{report['image_topic']}` ({report['image_type']})",
        f"- model: {report['architecture']} from `{report['checkpoint']}` on {report['device']} "
        f"({report['backend']}), "
        f"score threshold {report['score_threshold']:g}, batch {report['batch_size']}",
        f"- output bag: `{report['output_bag']}`",
        f"- frames: {report['frames']} ({report['processed_frames']} processed, {report['bad_frames']} bad)",
        f"- processing rate: {number(report['frames_per_s'])} frames/s overall "
        f"(model alone {number(report['model_frames_per_s'])} frames/s) in {report['wall_s']:.2f} s",
    ]
    if latency:
        lines.append(
            "- model latency per frame (ms): "
            + ", ".join(f"{k} {latency[k]:.1f}" for k in ("mean", "p50", "p90", "p99", "max"))
        )
    cmd = report["cmd_vel"]
    lines.append(
        f"- /cmd_vel: {cmd['messages']} commands at {cmd['control_rate_hz']:g} Hz, {cmd['moving']} non-zero, "
        f"max |linear| {cmd['max_abs_linear_mps']:.3f} m/s, max |angular| {cmd['max_abs_angular_radps']:.3f} rad/s"
    )
    camera = cmd["camera"]
    if "fx_px" in camera:
        lines.append(
            f"- follower bearing from the {camera['source']}: {camera['width_px']}x{camera['height_px']} px, "
            f"fx {camera['fx_px']:.1f} px, cx {camera['cx_px']:.1f} px"
        )
    tracking = report["tracking"]
    if tracking is not None:
        length = tracking["track_length_frames"]
        lines.append(
            f"- tracks: {tracking['tracks']} (length in frames: mean {length['mean']:.1f}, median "
            f"{length['median']:.0f}, max {length['max']}); {tracking['tracked_detections']} detections "
            f"({100 * tracking['tracked_fraction']:.0f} %) carry a track id"
        )
        truth = tracking["ground_truth"]
        if truth is not None:
            lines.append(
                f"- id switches against `{truth['file']}`: {truth['id_switches']} ({truth['objects']} objects, "
                f"{truth['matched_with_id']} of {truth['boxes']} boxes matched to a tracked detection)"
            )
    if report["replaced_topics"]:
        lines.append(f"- recorded topics replaced by this evaluation: {', '.join(report['replaced_topics'])}")
    for bad in report["bad_frame_examples"]:
        lines.append(f"- bad frame {bad['index']} (bag time {bad['bag_ns']} ns): {bad['error']}")
    if report["fault"]:
        lines += ["", f"**Error:** {report['fault']}"]
    lines += [
        "",
        f"## Detections per class ({report['detections']} in total)",
        "",
        "| Class | Detections |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {count} |" for name, count in report["detections_per_class"].items()]
    if report["ground_truth"] is not None:
        gt = report["ground_truth"]
        lines += [
            "",
            f"## VOC AP ({gt['frames_evaluated']} frames with ground truth, matched by {gt['match']})",
            "",
            report["ap_table"],
        ]
    return "\n".join(lines)
