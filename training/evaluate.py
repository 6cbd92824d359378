#!/usr/bin/env python3
"""Evaluate an ssd_ros checkpoint on a VOC-format dataset with the PASCAL VOC metric.

Runs the same :class:`~ssd_ros.vision.detector.Detector` the ROS node uses over every image of a split and
scores the result with :func:`ssd_ros.evaluation.voc_metric.evaluate_detections` (the devkit's semantics)::

    python training/evaluate.py --checkpoint runs/ssd300_voc0712/best.pt --data ~/data/VOCdevkit
    python training/evaluate.py --checkpoint ck.pt --data ~/data/VOCdevkit --split 2012/val --metric allpoint
    python training/evaluate.py --checkpoint picar.pt --folder ~/data/picar/test

Prints the per-class AP table (Markdown) and images/s, and writes to ``--out``: ``results.json`` (settings,
timing, per-class AP/precision/recall), ``ap.csv``, ``ap_table.md``, ``detections.csv`` (every raw detection,
0-based continuous pixel edges as in :mod:`ssd_ros.evaluation.voc`, exact float32 values) and ``pr_curves.png``.

The defaults are the VOC evaluation setting of the SSD paper: score threshold 0.01, at most 200 detections
per image, NMS IoU 0.45, VOC2007 11-point AP at IoU > 0.5 on VOC2007 test.

Bad paths, broken annotations, an unreadable checkpoint or a dataset with classes the checkpoint does not
know are reported before any image is processed, with exit status 2 (as an image found unreadable later);
a run that fails (out of memory, a device error, results that cannot be written) exits with status 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository (ssd_ros, training) importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from ssd_ros.cli import add_inference_arguments, inference_kwargs
from ssd_ros.evaluation.voc import VocFormatError, VocItem, VocSplit
from ssd_ros.evaluation.voc_metric import METRICS, VocEvaluation, evaluate_detections
from ssd_ros.evaluation.voc_report import format_ap_table, plot_pr_curves
from ssd_ros.vision.checkpoint import CheckpointError
from ssd_ros.vision.detections import Detections
from ssd_ros.vision.detector import EVALUATION_SETTINGS, Detector
from ssd_ros.vision.image_codec import ImageDecodeError, image_files, read_image_file
from training.detect import detect_split

__all__ = ["main", "parse_args"]


class UsageError(Exception):
    """A problem with the command line's inputs, found before any work (exit status 2)."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` (the help text says what an absent option means)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="evaluate.py",
        description="PASCAL VOC AP of an ssd_ros checkpoint on a VOC-format dataset.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="ssd_ros checkpoint (.pt) or export (.onnx, .xml) to evaluate"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="VOCdevkit root (holding VOC2007/, VOC2012/ ...)")
    source.add_argument(
        "--folder", type=Path, help="a VOC-format folder: Annotations/+JPEGImages/ or plain image+XML pairs"
    )
    parser.add_argument("--split", help="with --data: YEAR/SET, e.g. 2012/val (default: 2007/test)")
    parser.add_argument(
        "--image-set",
        help="with --folder holding ImageSets/Main: the list to use (default: every annotation)",
    )
    parser.add_argument("--metric", choices=METRICS, default="11point", help="11point = VOC2007, allpoint = VOC2010+")
    parser.add_argument("--iou", type=float, default=0.5, help="a detection matches when IoU is strictly above this")
    parser.add_argument("--device", default="auto", help="inference device: auto, cpu, cuda or cuda:N")
    paper = EVALUATION_SETTINGS
    parser.add_argument(
        "--score-threshold", type=float, default=paper["score_threshold"], help="keep detections scoring above this"
    )
    parser.add_argument("--nms-iou", type=float, default=paper["nms_iou"], help="per-class non-maximum suppression IoU")
    parser.add_argument("--max-detections", type=int, default=paper["max_detections"], help="detections kept per image")
    parser.add_argument("--batch-size", type=int, default=8, help="images per detector call")
    parser.add_argument("--workers", type=int, default=2, help="image-loading threads")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N images (0 = all)")
    parser.add_argument("--out", type=Path, help="output folder (default: eval/<checkpoint name>-<dataset>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_inference_arguments(parser)
    args = parser.parse_args(argv)
    if args.folder is not None and args.split is not None:
        parser.error("--split applies to --data (use --image-set with --folder)")
    if args.data is not None and args.split is None:
        args.split = "2007/test"
    if args.data is not None and args.image_set is not None:
        parser.error("--image-set applies to --folder (use --split with --data)")
    for name in ("batch_size", "max_detections"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers < 1 or args.limit < 0:
        parser.error("--workers must be at least 1 and --limit non-negative")
    if not 0.0 <= args.iou < 1.0:
        parser.error("--iou must be in [0, 1)")
    return args


def _is_devkit(path: Path) -> bool:
    return path.is_dir() and any(path.glob("VOC*/Annotations"))


def _is_voc_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "Annotations").is_dir() or any(path.glob("*.xml")))


def mixup_hint(devkit_option: str, devkit: Path | None, folder_option: str, folders: Sequence[Path]) -> str:
    """A hint when a VOC-format folder was given as a VOCdevkit or the other way round ('' otherwise)."""
    if devkit is not None and not _is_devkit(devkit) and _is_voc_folder(devkit):
        return f"; {devkit} is a VOC-format folder, not a VOCdevkit: give it as {folder_option} {devkit}"
    for folder in folders:
        if _is_devkit(folder) and not _is_voc_folder(folder):
            years = sorted(p.parent.name for p in folder.glob("VOC*/Annotations"))
            return (
                f"; {folder} is a VOCdevkit ({', '.join(years)}), not a VOC-format folder: give it as {devkit_option}"
            )
    return ""


def _load_split(args: argparse.Namespace) -> VocSplit:
    try:
        if args.data is not None:
            return VocSplit.from_devkit(args.data, args.split)
        return VocSplit.from_folder(args.folder, args.image_set)
    except VocFormatError as error:
        folders = [args.folder] if args.folder is not None else []
        raise UsageError(f"{error}{mixup_hint('--data', args.data, '--folder', folders)}") from error


def _unannotated_images(args: argparse.Namespace, split: VocSplit) -> list[str]:
    """Images a ``--folder`` without ``--image-set`` leaves out because they have no XML (sorted file names).

    Such a split is the XML files, so a negative image saved without one would silently not be evaluated
    (its false positives never counted); with a list (``--image-set``, ``--data``) a missing XML is an error.
    The folders looked in are those the split found its images in.
    """
    if args.folder is None or args.image_set is not None:
        return []
    listed = {item.image_path for item in split}
    folders = {image.parent for image in listed}  # each holds a listed image: image_files finds one at least
    return sorted(path.name for folder in folders for path in image_files(folder) if path not in listed)


def _default_out(args: argparse.Namespace, split: VocSplit) -> Path:
    dataset = split.name if args.data is not None else Path(args.folder).name
    tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset)
    return Path("eval") / f"{args.checkpoint.stem}-{tag}"


def _write_outputs(
    out: Path,
    result: VocEvaluation,
    items: Sequence[VocItem],
    detections: Sequence[Detections],
    summary: dict,
) -> dict[str, Path]:
    """results.json, ap.csv, ap_table.md, detections.csv and pr_curves.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("results.json", "ap.csv", "ap_table.md", "detections.csv", "pr_curves.png")}
    table = format_ap_table(result)
    paths["ap_table.md"].write_text(table + "\n")
    paths["results.json"].write_text(json.dumps({**summary, **result.to_dict(curves=True)}, indent=1) + "\n")
    with paths["ap.csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "ap", "npos", "num_difficult", "true_positives", "false_positives", "ignored"])
        for c in result.classes:
            ap = "" if not c.has_ground_truth else f"{c.ap:.6f}"
            writer.writerow([c.name, ap, c.npos, c.num_difficult, c.true_positives, c.false_positives, c.ignored])
        writer.writerow(["mAP", "" if np.isnan(result.map) else f"{result.map:.6f}", "", "", "", "", ""])
    with paths["detections.csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "class", "score", "x_min", "y_min", "x_max", "y_max"])
        for item, found in zip(items, detections):
            for box, score, name in zip(found.boxes, found.scores, found.names):
                # Shortest strings that read back to the same float32: the file reproduces the metric exactly.
                writer.writerow(
                    [item.image_id, name, *(np.format_float_positional(v, trim="-") for v in (score, *box))]
                )
    plot_pr_curves(result, paths["pr_curves.png"])
    return paths


def _error(message: str, status: int = 2) -> int:
    """One ``evaluate.py: error:`` line; returns the exit status (2 usage/data, 1 a failed run)."""
    print(f"evaluate.py: error: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate as the command line says; returns the exit status: 0, 2 bad inputs or data, 1 a failed run."""
    args = parse_args(argv)
    try:
        split, items, annotations, device, detector = _check_inputs(args)
    except (UsageError, CheckpointError, ValueError) as error:  # ValueError: VocFormatError, bad device/option
        return _error(str(error))
    size_mismatches: list[str] = []
    # Boxes empty or outside the image after clamping are not scored; the devkit counts them as objects never
    # found, so the AP here can be higher than its: they are listed and warned about.
    dropped = {item.image_id: a.dropped for item, a in zip(items, annotations) if a.dropped}
    unannotated = _unannotated_images(args, split)
    print(f"{split.name}: {len(items)} images, {sum(len(a) for a in annotations)} objects; device {device}")
    start = time.perf_counter()
    try:
        detections = detect_split(
            detector,
            items,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=not args.no_progress,
            load=_size_checked_loader(items, annotations, size_mismatches),
        )
    except ImageDecodeError as error:  # an image that cannot be read: the data's fault
        return _error(str(error))
    except RuntimeError as error:  # the run itself failed (out of memory, a device error)
        return _error(f"evaluation failed: {error}", status=1)
    seconds = time.perf_counter() - start
    images_per_s = len(items) / seconds if seconds > 0 else float("inf")

    result = evaluate_detections(
        detections, annotations, tuple(detector.class_names), iou_threshold=args.iou, metric=args.metric
    )
    summary = {
        "checkpoint": str(args.checkpoint),
        "dataset": split.name,
        "num_images": len(items),
        "device": str(device),
        "backend": detector.backend,
        "precision": detector.precision,
        "num_threads": detector.num_threads,
        "seconds": seconds,
        "images_per_s": images_per_s,
        "score_threshold": args.score_threshold,
        "nms_iou": args.nms_iou,
        "max_detections": args.max_detections,
        "detections": int(sum(len(d) for d in detections)),
        "annotation_size_mismatches": sorted(size_mismatches),
        "dropped_boxes": dropped,
        "unannotated_images": unannotated,
    }
    out = args.out if args.out is not None else _default_out(args, split)
    try:
        _write_outputs(out, result, items, detections, summary)
    except OSError as error:  # disk full, no permission, --out names a file
        return _error(f"cannot write the results to {out}: {error}", status=1)
    print()
    print(format_ap_table(result))
    print()
    print(
        f"{len(items)} images in {seconds:.1f} s: {images_per_s:.2f} images/s on {device} "
        f"({detector.backend} {detector.precision}, {detector.num_threads} thread(s))"
    )
    if size_mismatches:
        print(
            f"warning: {len(size_mismatches)} images differ in size from their annotation's <size> "
            f"(their boxes are scored as annotated): {sorted(size_mismatches)[:5]}",
            file=sys.stderr,
        )
    if dropped:
        print(
            f"warning: {sum(dropped.values())} annotated boxes in {len(dropped)} images are empty or outside their "
            f"image and are not scored (the devkit counts them, missed unless difficult): {sorted(dropped)[:5]}",
            file=sys.stderr,
        )
    if unannotated:
        print(
            f"warning: {len(unannotated)} images have no XML annotation and were not evaluated (give a negative "
            f"image an XML with no <object>): {unannotated[:5]}",
            file=sys.stderr,
        )
    print(f"results written to {out}/")
    return 0


def _check_inputs(args: argparse.Namespace):
    """Everything that can be wrong with the inputs, checked before any image is processed.

    Returns ``(split, items, annotations, device, detector)``; raises :class:`UsageError`, ``CheckpointError`` or
    ``ValueError`` (a :class:`~ssd_ros.evaluation.voc.VocFormatError`, a bad device or option).
    """
    if args.checkpoint.is_dir():
        inside = sorted(p.name for p in args.checkpoint.glob("*.pt"))
        hint = f"; it holds {', '.join(inside)}: give one, e.g. {args.checkpoint / inside[0]}" if inside else ""
        raise UsageError(f"--checkpoint {args.checkpoint} is a folder, not a checkpoint file{hint}")
    if not args.checkpoint.is_file():
        raise UsageError(f"checkpoint {args.checkpoint} not found")
    split = _load_split(args)
    items = split.items[: args.limit] if args.limit else split.items
    annotations = [item.annotation() for item in items]
    # The Detector resolves the device with the backend (auto: torch for a checkpoint): CUDA asked for where it
    # is missing, or for a CPU-only runtime, is refused there.
    detector = Detector.from_checkpoint(
        args.checkpoint,
        score_threshold=args.score_threshold,
        nms_iou=args.nms_iou,
        max_detections=args.max_detections,
        device=args.device,
        **inference_kwargs(args),
    )
    device = detector.device
    unknown = sorted({n for a in annotations for n in a.names} - set(detector.class_names))
    if unknown:
        raise UsageError(
            f"the dataset has classes the checkpoint does not know: {unknown}; "
            f"{args.checkpoint} detects {list(detector.class_names)}"
        )
    return split, items, annotations, device, detector


def _size_checked_loader(items: Sequence[VocItem], annotations, mismatches: list[str]):
    """An image loader that adds to ``mismatches`` each image whose size differs from its annotation's.

    A detector returns boxes in the image's pixels; an annotation whose <size> disagrees with its image
    would be scored in the wrong frame (the metric cannot tell), so such files are reported.
    """
    annotated_size = {item.image_id: (a.height, a.width) for item, a in zip(items, annotations)}

    def load_checked(item: VocItem) -> np.ndarray:
        image = read_image_file(item.image_path)
        if image.shape[:2] != annotated_size[item.image_id]:
            mismatches.append(item.image_id)  # list.append is atomic: safe from the loader threads
        return image

    return load_checked


if __name__ == "__main__":
    sys.exit(main())
