"""int8 on this CPU: the quantisers, 8 against 7 bits, exact int8 arithmetic against this CPU's int8 kernels.

x86 CPUs without VNNI sum pairs of uint8 x int8 products in int16, which saturates with 8-bit weights; the
backends halve such a file's weights at load (``fit_int8_weights``) and ``export_model --int8-weight-bits 7``
writes 7-bit ones. For each trained checkpoint, the share of torch fp32's detections (score > 0.3, same class,
IoU >= 0.5) each configuration keeps, on the labelled frames the benchmark models did not learn from and on the
lane footage:

* the exports: 8-bit and 7-bit (each the scheme the export kept), and 8-bit with the other quantiser's schemes
  only (NNCF's, or ONNX Runtime's);
* each in exact int8 arithmetic (ONNX Runtime with graph optimisation off runs the QDQ pairs as float ops: what
  any CPU whose int8 kernels do not saturate computes), and in ONNX Runtime and OpenVINO as the detector runs
  it on this CPU;
* where this CPU saturates, OpenVINO with ONNX Runtime's 8-bit weights as they are (what int8 exports did before).

int8 is calibrated on the 32 calibration frames of ``bench_inference.py``. Results: stdout and
``docs/benchmarks/int8_weights.md``.

    # the models bench_inference.py trained (make bench runs it first), or any checkpoints
    scripts/run.sh python benchmarks/bench_int8_weights.py [--checkpoints a.pt b.pt]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_detector import write_report
from bench_inference import CALIBRATION, CALIBRATION_FRAMES, LANE_VIDEO, REPO_ROOT, TEST_FRAMES, shown, split_frames

LIVE_THRESHOLD = 0.3
MODELS = REPO_ROOT / "build" / "bench_inference_models"


def checkpoint_parser(doc: str, page: str) -> argparse.ArgumentParser:
    """The arguments the int8 benchmarks share: ``--checkpoints`` and ``--out`` (``docs/benchmarks/<page>``)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument(
        "--checkpoints",
        nargs="+",
        type=Path,
        default=sorted(MODELS.glob("*/last.pt")),
        help=f"trained ssd_ros checkpoints (default: the ones bench_inference.py trained, {shown(MODELS)}/*/last.pt)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks" / page)
    return parser


def parsed(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The command line, refused when there are no checkpoints to measure."""
    args = parser.parse_args()
    if not args.checkpoints:
        parser.error(f"no checkpoints in {shown(MODELS)}: run benchmarks/bench_inference.py first, or name some")
    return args


def parse_args() -> argparse.Namespace:
    parser = checkpoint_parser(__doc__, "int8_weights.md")
    parser.add_argument("--frames", type=Path, default=CALIBRATION, help="labelled rover frames (VOC format)")
    parser.add_argument("--video", type=Path, default=LANE_VIDEO, help="rover footage, every frame")
    return parsed(parser)


def main() -> int:
    from ssd_ros.evaluation.voc import VocSplit
    from ssd_ros.tools.make_bag import video_frames
    from ssd_ros.vision.backends import cpu_summary
    from ssd_ros.vision.cpu import this_cpu
    from ssd_ros.vision.image_codec import read_image_file

    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench_int8_weights_"))
    calibration = sorted(args.frames.glob("*.jpg"))[CALIBRATION_FRAMES]
    _, held_out = split_frames(args.frames, calibration, TEST_FRAMES, workdir)
    split = VocSplit.from_folder(held_out)
    frames = {
        "images": [read_image_file(item.image_path) for item in split],
        "annotations": [item.annotation() for item in split],
        "footage": list(video_frames(args.video)[0]),
        "calibration": [read_image_file(path) for path in calibration],
    }
    cpu, summary = this_cpu(), cpu_summary()
    lines = [
        "# int8 on this CPU: the quantisers, 8 against 7 bits, exact arithmetic against this CPU's kernels",
        "",
        f"- CPU: {summary['model']}, {summary['cores']} cores; SIMD: {', '.join(summary['features']) or 'none'}; "
        f"int8 kernels saturate with 8-bit weights: **{'yes' if cpu.int8_saturates else 'no'}** (x86 without VNNI)",
        f"- torch {torch.__version__}, Python {platform.python_version()}; int8 calibrated on "
        f"{len(calibration)} rover frames; {len(split)} held-out labelled frames, {len(frames['footage'])} frames "
        f"of `{shown(args.video)}`",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M')}; command: `scripts/run.sh python benchmarks/"
        f"{Path(__file__).name} {' '.join(sys.argv[1:])}`",
        "",
    ]
    for checkpoint in args.checkpoints:
        lines += checkpoint_section(checkpoint, frames, workdir)
    write_report([*lines, ""], args.out)
    return 0


def int8_exports(checkpoint: Path, calibration: list, workdir: Path) -> tuple:
    """``(card, fp32 export, {name: int8 export}, ONNX Runtime's own 8-bit export)`` of ``checkpoint``.

    The int8 exports: 8-bit and 7-bit (each the scheme the export kept), and the 8-bit export of the other
    quantiser's schemes (ONNX Runtime's, or NNCF's where it is installed).
    """
    import importlib.util

    from ssd_ros.vision.checkpoint import load_checkpoint
    from ssd_ros.vision.export import INT8_SCHEMES, export_onnx_bytes, quantize_int8, read_exported, write_export

    model, card = load_checkpoint(checkpoint)
    fp32 = export_onnx_bytes(model, card)
    files, quantizers = {}, {"onnxruntime": "ONNX Runtime", "nncf": "NNCF"}  # configuration name -> export

    def export(bits: int, schemes: list[str] | None = None) -> tuple[Path, str]:
        """The int8 export and the scheme it kept."""
        data = quantize_int8(fp32, calibration, weight_bits=bits, schemes=schemes, progress=False)
        path = write_export(data, workdir / f"{card.architecture}_{bits}_{len(files)}.onnx", "onnx")
        return path, read_exported(path).int8["scheme"]

    for bits in (8, 7):
        path, kept = export(bits)
        files[f"{bits}-bit export ('{kept}')"] = path
        if bits == 8:
            by_quantizer = {kept: path}
            other = "nncf" if INT8_SCHEMES[kept].quantizer == "onnxruntime" else "onnxruntime"
            if other == "onnxruntime" or importlib.util.find_spec("nncf"):
                schemes = [name for name, scheme in INT8_SCHEMES.items() if scheme.quantizer == other]
                other_path, other_kept = export(8, schemes)
                files[f"8-bit export of {quantizers[other]}'s schemes ('{other_kept}')"] = other_path
                by_quantizer[other_kept] = other_path
            onnxruntime_8_bit = next(p for n, p in by_quantizer.items() if INT8_SCHEMES[n].quantizer == "onnxruntime")
    return card, write_export(fp32, workdir / f"{card.architecture}_fp32.onnx", "onnx"), files, onnxruntime_8_bit


def checkpoint_section(checkpoint: Path, frames: dict, workdir: Path) -> list[str]:
    """The table for one checkpoint: every configuration against torch fp32."""
    import openvino as ov

    from ssd_ros.evaluation.voc_metric import evaluate_detections, matched_fraction
    from ssd_ros.vision.backends import OnnxRuntimeNetwork, OpenVinoNetwork, int8_saturating_convolutions
    from ssd_ros.vision.cpu import this_cpu
    from ssd_ros.vision.detector import Detector
    from ssd_ros.vision.export import read_exported

    card, _, files, onnxruntime_8_bit = int8_exports(checkpoint, frames["calibration"], workdir)
    spec = read_exported(onnxruntime_8_bit).spec

    def wrapped(network) -> Detector:
        return Detector(network, card.class_names, card=card, label_map=card.label_map, warmup_runs=0,
                        score_threshold=LIVE_THRESHOLD)  # fmt: skip

    def loaded(path: Path, backend: str) -> Detector:
        return Detector.from_checkpoint(path, backend=backend, device="cpu", warmup_runs=0,
                                        score_threshold=LIVE_THRESHOLD)  # fmt: skip

    configurations = []
    for name, path in files.items():
        exact = OnnxRuntimeNetwork(path, spec, precision="int8", optimize=False)
        configurations.append((f"{name}, exact int8 arithmetic", wrapped(exact)))
        count = int8_saturating_convolutions(path) if this_cpu().int8_saturates else 0
        halved = f" (weights of {count} of its convolutions halved to 7 bits at load)" if count else ""
        for backend in ("onnxruntime", "openvino"):
            configurations.append((f"{name}, {backend} here{halved}", loaded(path, backend)))
    if this_cpu().int8_saturates:
        # An ov.Model is taken as it is: the 8-bit weights reach the saturating kernels, as before fit_int8_weights.
        as_is = OpenVinoNetwork(ov.Core().read_model(os.fspath(onnxruntime_8_bit)), spec, precision="int8")
        configurations.append(
            ("8-bit export of ONNX Runtime's schemes, openvino here with its weights as they are", wrapped(as_is))
        )

    def run(detector: Detector) -> tuple[float, list, list]:
        labelled = detector.detect_batch(frames["images"])
        ap = evaluate_detections(labelled, frames["annotations"], card.class_names).map
        return ap, labelled, [detector(frame) for frame in frames["footage"]]

    reference_ap, reference, reference_footage = run(loaded(checkpoint, "torch"))
    lines = [
        f"## {card.architecture} (`{shown(checkpoint)}`)",
        "",
        f"torch fp32: VOC07 AP {reference_ap:.4f} at score > {LIVE_THRESHOLD}; {sum(map(len, reference))} detections "
        f"on the labelled frames, {sum(map(len, reference_footage))} on the footage.",
        "",
        "| configuration | fp32's labelled detections kept | fp32's footage detections kept | AP - fp32 |",
        "|---|---:|---:|---:|",
    ]
    for name, detector in configurations:
        ap, labelled, footage = run(detector)
        lines.append(
            f"| {name} | {matched_fraction(reference, labelled):.1%} | "
            f"{matched_fraction(reference_footage, footage):.1%} | {ap - reference_ap:+.4f} |"
        )
        print(lines[-1], flush=True)
    return [*lines, ""]


if __name__ == "__main__":
    sys.exit(main())
