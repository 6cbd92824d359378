"""``export_model``: an ssd_ros checkpoint (or torchvision's COCO models) -> ONNX or OpenVINO IR, fp32 or int8.

    export_model --checkpoint best.pt --format onnx --out best.onnx
    export_model --checkpoint best.pt --format openvino --int8 --calibration frames/ --out best_int8.xml
    export_model --coco ssdlite320_mobilenet_v3 --format openvino --out coco_ssdlite.xml

``--coco ARCH`` exports torchvision's COCO-trained ``ssd300_vgg16`` or ``ssdlite320_mobilenet_v3`` (80 classes,
``person`` among them: a ready model, no training); ``--coco`` alone means ``ssd300_vgg16``. Its weights are
downloaded once into torch's hub cache (sha256-checked, read with ``weights_only``).

The file carries the model card in its metadata, so the detector node, ``bag_eval`` and ``evaluate.py``
load it like a checkpoint (``backend:=onnxruntime`` or ``openvino``). int8 is calibrated on the images of
``--calibration`` (the rover's own frames or VOC images; a few hundred are plenty). Every input is
checked before the slow work starts; a problem is one line on stderr and exit status 2, and nothing
half-written is left behind.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ssd_ros.vision.checkpoint import CheckpointError, load_checkpoint, load_coco_pretrained
from ssd_ros.vision.cpu import FAITHFUL_INT8
from ssd_ros.vision.detector import LIVE_SETTINGS
from ssd_ros.vision.export import (
    EXPORT_FORMATS,
    ExportedModel,
    export_onnx_bytes,
    quantize_int8,
    read_exported,
    write_export,
)
from ssd_ros.vision.image_codec import IMAGE_SUFFIXES, ImageDecodeError, ImageFolderError, image_files, read_image_file
from ssd_ros.vision.model import ARCHITECTURES, WeightsUnavailableError

SUFFIXES = {"onnx": ".onnx", "openvino": ".xml"}


class ExportInputError(Exception):
    """An input of the export that is wrong; the message says which and why."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of ``export_model``."""
    parser = argparse.ArgumentParser(prog="export_model", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="ssd_ros checkpoint (.pt) to export")
    source.add_argument(
        "--coco",
        nargs="?",
        const="ssd300_vgg16",
        choices=ARCHITECTURES,
        metavar="ARCH",
        help=f"torchvision's COCO-trained {' or '.join(ARCHITECTURES)} (default {ARCHITECTURES[0]}; needs internet "
        "once or the weights in torch's hub cache)",
    )
    parser.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        help="onnx (.onnx) or openvino (.xml+.bin); default: the one --out's suffix names",
    )
    parser.add_argument("--out", type=Path, required=True, help="output file (.onnx, or .xml for openvino)")
    parser.add_argument(
        "--int8", action="store_true", help="post-training static int8 quantisation (needs --calibration)"
    )
    parser.add_argument(
        "--calibration", type=Path, help=f"folder of real images ({'/'.join(IMAGE_SUFFIXES)}) to calibrate int8 on"
    )
    parser.add_argument(
        "--calibration-limit", type=int, default=300, help="use at most this many calibration images (default 300)"
    )
    parser.add_argument(
        "--int8-weight-bits",
        type=int,
        choices=(8, 7),
        default=8,
        help="8 (default), or 7 for x86 CPUs without VNNI: their int8 kernels saturate with 8-bit weights on "
        "inputs that do not start at zero, which the detector then halves at load (rounding them twice); a 7-bit "
        "export runs there as it measured",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.int8 != (args.calibration is not None):
        parser.error("--int8 and --calibration go together (int8 is calibrated on real images)")
    if args.calibration_limit < 1:
        parser.error("--calibration-limit must be >= 1")
    if args.format is None:
        formats = {suffix: export_format for export_format, suffix in SUFFIXES.items()}
        if args.out.suffix not in formats:
            parser.error(f"--out {args.out}: name a .onnx or .xml (OpenVINO) file, or give --format")
        args.format = formats[args.out.suffix]
    return args


def _check_output(out: Path, export_format: str) -> None:
    suffix = SUFFIXES[export_format]
    if out.suffix != suffix:
        raise ExportInputError(f"--out {out}: a {export_format} export is a {suffix} file")
    # The folders --out needs are made only when the export is written: a refused input leaves none behind.
    existing = out.absolute().parent
    while not existing.exists():
        existing = existing.parent
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ExportInputError(f"--out {out}: cannot write in {existing} ({error.strerror or error})") from error


def _calibration_images(folder: Path, limit: int) -> list[Path]:
    try:
        files = image_files(folder)
    except ImageFolderError as error:
        raise ExportInputError(f"--calibration: {error}") from error
    # Spread evenly over the whole folder (frames of a drive are sorted in time), its end included.
    return [files[i * len(files) // limit] for i in range(min(limit, len(files)))]


def export(args: argparse.Namespace) -> Path:
    """Run the export ``args`` describe; raises ExportInputError, CheckpointError or WeightsUnavailableError."""
    _check_output(args.out, args.format)
    calibration = _calibration_images(args.calibration, args.calibration_limit) if args.int8 else []
    if args.coco:
        model, card = load_coco_pretrained(args.coco, "cpu", progress=not args.quiet)
    else:
        model, card = load_checkpoint(args.checkpoint, device="cpu")
    onnx = export_onnx_bytes(model, card)
    if args.int8:
        try:
            images = [read_image_file(path) for path in calibration]
        except ImageDecodeError as error:
            raise ExportInputError(f"--calibration: {error}") from error
        onnx = quantize_int8(onnx, images, weight_bits=args.int8_weight_bits, progress=not args.quiet)
    return write_export(onnx, args.out, args.format)


def int8_report(exported: ExportedModel) -> list[str]:
    """What an int8 export measured against fp32 (its metadata): the scheme it kept, then one line per runtime.

    A last line warns where it kept fewer of fp32's live candidates than :data:`~ssd_ros.vision.cpu.FAITHFUL_INT8`
    (the detector warns too when it loads the file there). Nothing for a file without that record (fp32, or an int8
    export older than it).
    """
    info = exported.int8
    if not info:
        return []
    measured = info["measured"][info["scheme"]]
    frames = f"{info['agreement_images']} image(s)"
    if info["agreement_images_held_out"]:  # files written before the scheme was calibrated again lack the count
        frames += f" held out of its calibration on {info.get('scheme_calibration_images', 'the other')} image(s)"
    bits = f"{exported.int8_weight_bits}-bit weights"
    if exported.int8_weight_bits > 7 and not exported.int8_saturating:
        bits += " (none where they saturate CPUs without VNNI: runs there as it is)"
    lines = [
        f"int8 scheme '{info['scheme']}' (the closest to fp32 of {len(info['measured'])} tried), calibrated on "
        f"{info['calibration_images']} image(s), {bits}; against fp32 on {frames}:"
    ]
    threshold = LIVE_SETTINGS["score_threshold"]
    for runtime, agreement in measured.items():
        lines.append(
            f"  {runtime}: kept {agreement['live_pairs_kept']:.1%} of fp32's {agreement['live_pairs']} candidates "
            f"above {threshold:g}, p95 score error {agreement['score_error_p95']:.3f}"
        )
    lines += [f"int8 scheme '{scheme}' failed: {reason}" for scheme, reason in info.get("failed", {}).items()]
    unfaithful = [runtime for runtime, agreement in measured.items() if agreement["live_pairs_kept"] < FAITHFUL_INT8]
    if unfaithful:
        lines.append(
            f"warning: below {FAITHFUL_INT8:.0%} in {' and '.join(unfaithful)}: detections near the score threshold "
            "come and go; the fp32 export (without --int8) keeps them all"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``export_model`` executable; returns the exit status."""
    args = parse_args(argv)
    try:
        out = export(args)
    except (ExportInputError, CheckpointError, WeightsUnavailableError) as error:
        print(f"export_model: error: {error}", file=sys.stderr)
        return 2
    size_mb = sum(p.stat().st_size for p in (out, out.with_suffix(".bin")) if p.exists()) / 1e6
    precision = "int8" if args.int8 else "fp32"
    print(f"export_model: wrote {out} ({args.format}, {precision}, {size_mb:.1f} MB)")
    if args.int8:
        for line in int8_report(read_exported(out)):
            print(f"export_model: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
