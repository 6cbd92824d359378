"""Detections on x86-64 vs aarch64: the same model files and real rover frames on each side, compared.

Three steps (scripts/aarch64_check.sh runs them; the middle one under emulation, inside the arm64 root):

    aarch64_parity.py prepare --out DIR    # x86: train a small SSDlite on rover frames, export fp32/int8 ONNX and IR
    aarch64_parity.py dump --models DIR --out side.json [--frames N]   # each side: every backend and precision
    aarch64_parity.py compare x86.json aarch64.json [--markdown table.md]

Each configuration runs in a process of its own, so one that crashes (a runtime killed by a signal) is
recorded as such and the others still run. The comparison per configuration: the share of the x86
detections that aarch64 also found (same class, IoU >= 0.5, matched one to one:
:func:`~ssd_ros.evaluation.voc_metric.matched_fraction`) and the reverse share; of the x86 detections with an
aarch64 box at IoU >= 0.5, the share with one of the same class among those boxes; and the largest score
difference between an x86 detection and its same-class aarch64 box of highest IoU. Seconds per frame are
recorded too; under emulation they only compare configurations with each other on the same emulated CPU
(indications of instruction counts, not a Pi's speed).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
FRAMES = REPO_ROOT.parent / "shared" / "data" / "picar_camera" / "detection"
SCORE_THRESHOLD = 0.05  # low, so that many detections are compared, not only the confident few
CONFIGS = {
    "torch fp32": ("lite.pt", "torch", "fp32"),
    "onnxruntime fp32": ("lite.onnx", "onnxruntime", "fp32"),
    "onnxruntime int8": ("lite_int8.onnx", "onnxruntime", "int8"),
    "openvino fp32": ("lite.xml", "openvino", "fp32"),
    "openvino int8": ("lite_int8.xml", "openvino", "int8"),
    "auto (int8 .onnx)": ("lite_int8.onnx", "auto", "auto"),
}


def _frames(limit: int) -> list[Path]:
    """``limit`` rover frames spread evenly over the 48 (train and test), in a fixed order."""
    frames = sorted(FRAMES.glob("*/*.jpg"))
    picks = np.linspace(0, len(frames) - 1, min(limit, len(frames))).round().astype(int)
    return [frames[i] for i in dict.fromkeys(picks)]


def prepare(out: Path, iterations: int, checkpoint: Path | None) -> None:
    """The model files: an SSDlite checkpoint exported fp32 and int8, as ONNX and OpenVINO IR.

    The checkpoint is ``checkpoint``, or one trained here from scratch on 8 rover frames (test_backends'
    recipe); int8 is calibrated on 32 other rover frames.
    """
    from ssd_ros.vision.checkpoint import load_checkpoint
    from ssd_ros.vision.export import export_onnx_bytes, quantize_int8, write_export
    from ssd_ros.vision.image_codec import read_image_file

    out.mkdir(parents=True, exist_ok=True)
    frames = sorted((FRAMES / "train").glob("*.jpg"))
    if checkpoint is None:
        _train(frames[:8], out, iterations)
    elif checkpoint.resolve() != (out / "lite.pt").resolve():
        shutil.copy(checkpoint, out / "lite.pt")
    model, card = load_checkpoint(out / "lite.pt")
    fp32 = export_onnx_bytes(model, card)
    # Calibration: other frames of the same drive than the training ones.
    int8 = quantize_int8(fp32, [read_image_file(p) for p in frames[8:40]])
    for onnx, stem in ((fp32, "lite"), (int8, "lite_int8")):
        write_export(onnx, out / f"{stem}.onnx", "onnx")
        write_export(onnx, out / f"{stem}.xml", "openvino")


def _train(frames: list[Path], out: Path, iterations: int) -> None:
    """``out/lite.pt``: an SSDlite trained from scratch on ``frames`` (and their VOC XML files)."""
    from training import train

    subset = out / "train_frames"
    subset.mkdir(exist_ok=True)
    for image in frames:
        for source in (image, image.with_suffix(".xml")):
            shutil.copy(source, subset / source.name)
    run = out / "run"
    train.train(
        train.parse_args(
            [
                *("--train-folder", str(subset), "--architecture", "ssdlite320_mobilenet_v3", "--no-pretrained"),
                *("--workers", "0", "--threads", "2", "--output-dir", str(run), "--iterations", str(iterations)),
                *("--batch-size", "4", "--lr", "0.01", "--warmup-iterations", "10", "--no-augment"),
                *("--precise-bn-batches", "4", "--log-every", "50", "--checkpoint-every", "100000"),
            ]
        )
    )
    shutil.copy(run / "last.pt", out / "lite.pt")


def dump_one(models: Path, name: str, limit: int) -> dict:
    """One configuration's detections on the frames, its seconds per frame and what ``auto`` chose."""
    from ssd_ros.vision.detector import Detector
    from ssd_ros.vision.image_codec import read_image_file

    file, backend, precision = CONFIGS[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        detector = Detector.from_checkpoint(
            models / file, backend=backend, precision=precision, device="cpu", score_threshold=SCORE_THRESHOLD
        )
    frames, seconds = [], []
    for path in _frames(limit):
        image = read_image_file(path)
        start = time.perf_counter()
        detections = detector(image)
        seconds.append(time.perf_counter() - start)
        frames.append(
            {
                "frame": path.name,
                "boxes": detections.boxes.tolist(),
                "scores": detections.scores.tolist(),
                "labels": detections.labels.tolist(),
            }
        )
    return {
        "backend": detector.backend,
        "precision": detector.precision,
        "warnings": [str(w.message) for w in caught if "pay off" in str(w.message)],
        "seconds_per_frame": float(np.median(seconds)),
        "frames": frames,
    }


def dump(models: Path, out: Path, limit: int, names: list[str]) -> None:
    """Every configuration in a process of its own; a crash is recorded with its exit status."""
    from ssd_ros.vision.cpu import this_cpu

    result = {"machine": platform.machine(), "cpu": this_cpu().describe(), "versions": _versions(), "configs": {}}
    for name in names:
        start = time.monotonic()
        child = subprocess.run(
            [sys.executable, __file__, "dump-one", "--models", str(models), "--name", name, "--frames", str(limit)],
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - start
        if child.returncode == 0:
            entry = json.loads(child.stdout.strip().splitlines()[-1])
        else:
            tail = (child.stderr.strip().splitlines() or ["(no output)"])[-1]
            status = f"killed by signal {-child.returncode}" if child.returncode < 0 else f"exit {child.returncode}"
            entry = {"error": f"{status}: {tail[:300]}"}
        entry["wall_s"] = round(wall, 1)
        result["configs"][name] = entry
        summary = entry.get("error") or f"{entry['seconds_per_frame']:.2f} s/frame"
        print(f"{name}: {summary} ({wall:.0f} s)", flush=True)
    out.write_text(json.dumps(result, indent=1))


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for module in ("torch", "torchvision", "onnxruntime", "openvino", "numpy"):
        try:
            versions[module] = __import__(module).__version__
        except Exception as error:  # noqa: BLE001 - a runtime that does not even import is a result too
            versions[module] = f"not importable ({type(error).__name__})"
    return versions


def _as_detections(frame: dict):
    from ssd_ros.vision.detections import Detections

    boxes = np.asarray(frame["boxes"], np.float32).reshape(-1, 4)
    return Detections(boxes, np.asarray(frame["scores"], np.float32), np.asarray(frame["labels"], np.int64), ())


def compare_one(reference: dict, other: dict) -> dict:
    """Agreement of ``other``'s detections with ``reference``'s, frame by frame."""
    from ssd_ros.evaluation.voc_metric import matched_fraction
    from ssd_ros.vision.detections import iou_matrix

    ref = [_as_detections(f) for f in reference["frames"]]
    oth = [_as_detections(f) for f in other["frames"]]
    same_class, overlapped, score_diff = 0, 0, 0.0
    for a, b in zip(ref, oth, strict=True):
        if not len(a) or not len(b):
            continue
        overlaps = iou_matrix(a.boxes, b.boxes)
        for i, row in enumerate(overlaps):
            if row.max() < 0.5:
                continue
            overlapped += 1
            # Per-class NMS leaves boxes of several classes on one object: look for the same class among them.
            same = np.flatnonzero((row >= 0.5) & (b.labels == a.labels[i]))
            if len(same):
                same_class += 1
                j = same[np.argmax(row[same])]
                score_diff = max(score_diff, abs(float(a.scores[i]) - float(b.scores[j])))
    return {
        "detections": (sum(map(len, ref)), sum(map(len, oth))),
        "matched": matched_fraction(ref, oth),
        "matched_reverse": matched_fraction(oth, ref),
        "same_class": same_class / overlapped if overlapped else 1.0,
        "max_score_diff": score_diff,
    }


def compare(x86_path: Path, arm_path: Path, markdown: Path | None) -> int:
    """Print (and write) the comparison table; exit status 1 when an fp32 configuration disagrees."""
    x86, arm = json.loads(x86_path.read_text()), json.loads(arm_path.read_text())
    lines = [
        f"x86: {x86['cpu']}; aarch64: {arm['cpu']}",
        "",
        "| configuration | runs as (x86 / aarch64) | detections x86 / aarch64 | matched (x86 found on aarch64) "
        "| reverse | same class | max score diff | s/frame x86 / aarch64 (emulated) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    failed = False
    for name, ref in x86["configs"].items():
        other = arm["configs"].get(name, {"error": "not run"})
        if "error" in ref or "error" in other:
            lines.append(f"| {name} | | | {ref.get('error', 'ok')} / {other.get('error', 'ok')} | | | | |")
            failed |= "fp32" in name and "error" in other and "signal" not in other["error"]
            continue
        c = compare_one(ref, other)
        runs = f"{ref['backend']} {ref['precision']} / {other['backend']} {other['precision']}"
        lines.append(
            f"| {name} | {runs} | {c['detections'][0]} / {c['detections'][1]} | {c['matched']:.1%} "
            f"| {c['matched_reverse']:.1%} | {c['same_class']:.1%} | {c['max_score_diff']:.1e} "
            f"| {ref['seconds_per_frame']:.3f} / {other['seconds_per_frame']:.2f} |"
        )
        failed |= "fp32" in name and c["matched"] < 0.99
    for side, data in (("x86", x86), ("aarch64", arm)):
        for name, entry in data["configs"].items():
            for warning in entry.get("warnings", []):
                lines.append(f"\n{side}, {name}: warning: {warning}")
    text = "\n".join(lines)
    print(text)
    if markdown:
        markdown.write_text(text + "\n")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    p = steps.add_parser("prepare", help="x86: train and export the model files")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--checkpoint", type=Path, help="an SSDlite checkpoint to use instead of training one")
    for step in ("dump", "dump-one"):
        p = steps.add_parser(step, help="detections of every configuration (dump) or one (dump-one) to JSON")
        p.add_argument("--models", type=Path, required=True)
        p.add_argument("--frames", type=int, default=16, help="rover frames, spread over the 48 (default 16)")
        if step == "dump":
            p.add_argument("--out", type=Path, required=True)
            p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
        else:
            p.add_argument("--name", choices=list(CONFIGS), required=True)
    p = steps.add_parser("compare", help="x86 JSON vs aarch64 JSON")
    p.add_argument("x86", type=Path)
    p.add_argument("aarch64", type=Path)
    p.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    if args.step == "prepare":
        prepare(args.out, args.iterations, args.checkpoint)
    elif args.step == "dump":
        dump(args.models, args.out, args.frames, args.configs)
    elif args.step == "dump-one":
        print(json.dumps(dump_one(args.models, args.name, args.frames)))
    else:
        return compare(args.x86, args.aarch64, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
