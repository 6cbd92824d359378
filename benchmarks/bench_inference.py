"""Inference backends x precisions on this CPU: network, Detector call and node end to end, against torch fp32.

In one run, on a real 640x480 rover frame, for SSDlite320 and SSD300 (trained here first, as the page's models
are, unless checkpoints are given or ``--untrained`` asks for random weights: speed does not depend on them),
at 1 thread and at all cores:

* every configuration (torch fp32 = the reference, torch bf16, ONNX Runtime fp32 / int8, OpenVINO fp32 /
  bf16 / int8): network time (the backend alone), ``Detector`` call time (decode-free frame path:
  preprocess + network + post-processing), p50/p95, ratio to torch fp32 measured interleaved in the same
  loop; and the node end to end over DDS (publish ``Image`` -> receive ``Detection2DArray``), p50/p95,
  its ratio to the network time and its speed-up over the torch fp32 node;
* the parts of the frame path around the network (preprocess, post-processing, message conversion);
* for the fastest node configuration of each architecture: a 30 Hz camera stream for ``--stream-s``:
  processed rate, image age, RSS.

int8 files are calibrated on real rover frames (``../shared/data``). The CPU model and its SIMD features
are reported beside the numbers because they decide the ratios (bf16 and int8 kernels need AVX512-BF16 /
AMX and VNNI). Results: stdout and ``docs/benchmarks/inference.md``.

    # the page (make bench): both architectures, trained here first (TRAIN_RECIPES; 11-20 min each on 2 cores the
    # first time, then cached in build/bench_inference_models), int8/bf16 accuracy against fp32 on the labelled
    # frames they did not learn from (11 + 5 test) and the footage; the page's run (--iterations 8
    # --node-iterations 8 --stream-s 10) then took ~40 min on 2 cores, the defaults take longer
    scripts/run.sh python benchmarks/bench_inference.py
    # speed only, random weights:
    scripts/run.sh python benchmarks/bench_inference.py --untrained --architectures ssdlite320_mobilenet_v3
    # your trained models, accuracy on your labelled frames:
    scripts/run.sh python benchmarks/bench_inference.py --checkpoints lite.pt vgg.pt --agreement-frames frames/
    # on the robot (ROS 2 from apt, in the colcon workspace): the Pi's page, docs/benchmarks/inference_pi.md
    make bench-pi          # = python3 benchmarks/bench_inference.py --pi [--frames your/rover/frames]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from bench_detector import NodeUnderTest, percentiles, stream, test_frame, time_calls, write_report

REPO_ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = REPO_ROOT.parent / "shared" / "data" / "picar_camera" / "detection" / "train"
LANE_VIDEO = REPO_ROOT.parent / "shared" / "data" / "picar_camera" / "video" / "lane_drive.avi"
# (backend, precision, which file the node loads)
CONFIGS = [
    ("torch", "fp32", "pt"),
    ("torch", "bf16", "pt"),
    ("onnxruntime", "fp32", "onnx"),
    ("onnxruntime", "int8", "int8"),
    ("openvino", "fp32", "onnx"),
    ("openvino", "bf16", "onnx"),
    ("openvino", "fp16", "onnx"),
    ("openvino", "int8", "int8"),
]
TEST_FRAMES = CALIBRATION.parent / "test"
# The frames of --frames that calibrate int8 (sorted; not the first 8: the tests train and evaluate on those). --train
# trains on these frames only, so the agreement tables can hold out the other labelled frames: five test frames
# alone gave SSD300 23 detections, too few to tell 97% of them kept from 95%.
CALIBRATION_FRAMES = slice(8, 40)
# The models the page measures, trained here by --train (training/train.py from scratch on the 32 calibration
# frames; the agreement tables then use the other 11 and the 5 test frames). Speed does not depend on the weights.
TRAIN_RECIPES = {
    # With train.py's augmentation (its default). Trained without it (200 and 500 iterations) the same network had
    # 4x the int8 score error on the footage (p95 0.07-0.09 against 0.018-0.019), and int8 kept 80-92% of fp32's
    # footage detections instead of 98.7% (all 43 frames). On the 32: loss 5.2, 17 minutes on a 2-core EPYC.
    "ssdlite320_mobilenet_v3": ["--iterations", "1500", "--lr", "0.01", "--warmup-iterations", "10"],
    # SSD300 from scratch (VGG16 has no batch norm) gave non-finite losses at lr 0.01 (iteration 16), 0.002
    # (iteration 36) and 0.001 (iteration 55); at 0.0004 its loss fell steadily, 20 -> 0.66 in 250 iterations on
    # all 43 frames (20 minutes on a 2-core Xeon), 20 -> 0.55 on the 32 (11 minutes on a 2-core EPYC). With the
    # augmentation it did not fall within 40 iterations at 0.0005.
    "ssd300_vgg16": ["--iterations", "250", "--lr", "0.0004", "--warmup-iterations", "20", "--no-augment"],
}


def shown(path: Path) -> str:
    """``path`` as the result page names it: relative to the repository (``../shared/...``), not this machine's."""
    return os.path.relpath(Path(path).resolve(), REPO_ROOT)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--architectures", nargs="+", default=["ssdlite320_mobilenet_v3", "ssd300_vgg16"], help="models to time"
    )
    parser.add_argument(
        "--checkpoints", nargs="*", type=Path, default=[], help="trained checkpoints, one per architecture, in order"
    )
    models = parser.add_mutually_exclusive_group()
    models.add_argument(
        "--train",
        nargs="*",
        metavar="ARCHITECTURE",
        help="train the models to measure (TRAIN_RECIPES, on the calibration frames of --frames; these "
        "architectures, or all when none is named) where no checkpoint is given, cached in --models-dir; "
        "agreement is then measured on the held-out labelled frames (the rest of --frames and the test frames) "
        "unless --agreement-frames says (the default without --checkpoints, --untrained or --pi: every "
        "architecture)",
    )
    models.add_argument(
        "--untrained", action="store_true", help="random-init networks where no checkpoint is given: speed only"
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=REPO_ROOT / "build" / "bench_inference_models",
        help="where --train keeps its checkpoints (reused when present)",
    )
    parser.add_argument(
        "--agreement-frames",
        type=Path,
        help="labelled VOC-format frames on which int8/bf16 are compared with fp32 (AP, matched detections) "
        "for the architectures given a trained checkpoint",
    )
    parser.add_argument(
        "--fidelity-video",
        type=Path,
        default=LANE_VIDEO,
        help="rover footage (every frame, unlabelled) on which the share of fp32's detections each "
        "configuration keeps is counted too: many more detections than the labelled frames give",
    )
    parser.add_argument("--iterations", type=int, default=15, help="timed calls per configuration and measurement")
    parser.add_argument("--node-iterations", type=int, default=10, help="round trips per node configuration")
    parser.add_argument("--stream-s", type=float, default=30.0, help="length of the 30 Hz stream (s)")
    parser.add_argument("--out", type=Path, help="result page (default: docs/benchmarks/inference.md, inference_pi.md)")
    parser.add_argument(
        "--pi",
        action="store_true",
        help="the robot's run: SSDlite320 only, 1 and 4 threads, a 10 s stream, the installed runtimes only; "
        "writes docs/benchmarks/inference_pi.md (docs/benchmarks/pi.md)",
    )
    parser.add_argument(
        "--frames", type=Path, default=CALIBRATION, help="real rover frames: the timed frame and int8 calibration"
    )
    parser.add_argument(
        "--domain-id",
        default=os.environ.get("ROS_DOMAIN_ID", str(os.getpid() % 100 + 101)),
        help="ROS_DOMAIN_ID for this run (default: $ROS_DOMAIN_ID, as scripts/run.sh sets it)",
    )
    args = parser.parse_args()
    if args.train is None and not (args.untrained or args.pi or args.checkpoints):
        args.train = []  # every architecture: the page's models
    if args.pi:
        args.architectures, args.stream_s = ["ssdlite320_mobilenet_v3"], min(args.stream_s, 10.0)
    args.out = args.out or REPO_ROOT / "docs" / "benchmarks" / ("inference_pi.md" if args.pi else "inference.md")
    return args


def split_frames(frames: Path, training: list[Path], test: Path, into: Path) -> tuple[Path, Path]:
    """Folders of links to the labelled frames: ``(training, held out)``.

    Training: ``training`` (the calibration frames); held out: the rest of ``frames`` and every frame of ``test``.
    """
    held_out = [p for p in sorted(frames.glob("*.jpg")) if p not in training] + sorted(test.glob("*.jpg"))
    folders = into / "training_frames", into / "held_out_frames"
    for folder, images in zip(folders, (training, held_out)):
        folder.mkdir(parents=True)
        for image in images:
            for path in (image, image.with_suffix(".xml")):
                (folder / path.name).symlink_to(path.resolve())
    return folders


def described(frames: Path) -> str:
    """Where the labelled frames of ``frames`` come from, as the result page names them (links resolved)."""
    sources = Counter(image.resolve().parent for image in sorted(frames.glob("*.jpg")))
    return ", ".join(f"{count} of `{shown(folder)}`" for folder, count in sources.items())


def trained_checkpoint(architecture: str, frames: Path, models_dir: Path) -> Path:
    """The checkpoint TRAIN_RECIPES makes for ``architecture`` on ``frames`` (trained once, then reused)."""
    # Named by what it learnt from (the frames' and labels' bytes, the recipe), so that another split, other
    # frames or another recipe train a new model rather than reuse this one.
    images = sorted(frames.glob("*.jpg"))
    learnt_from = hashlib.sha256(" ".join(TRAIN_RECIPES[architecture]).encode())
    for path in images:
        learnt_from.update(path.read_bytes() + path.with_suffix(".xml").read_bytes())
    output = models_dir / f"{architecture}_{len(images)}_frames_{learnt_from.hexdigest()[:8]}"
    if not (output / "last.pt").is_file():
        argv = [
            *("--train-folder", str(frames), "--architecture", architecture, "--no-pretrained", "--workers", "0"),
            *("--batch-size", "4", "--precise-bn-batches", "4", "--val-set", "none"),
            *("--checkpoint-every", "100000", "--threads", str(os.cpu_count() or 1), "--output-dir", str(output)),
            *TRAIN_RECIPES[architecture],
        ]
        print(f"training {architecture}: python training/train.py {' '.join(argv)}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(REPO_ROOT / "training" / "train.py"), *argv], check=True)
    return output / "last.pt"


def runnable_configs() -> list[tuple[str, str, str]]:
    """CONFIGS whose runtime is installed here (a robot may have only one of them)."""
    from ssd_ros.vision.cpu import require_runtime

    def installed(backend: str) -> bool:
        try:
            require_runtime(backend)
        except ValueError as missing:
            print(f"skipping {backend}: {missing}", file=sys.stderr)
            return False
        return True

    backends = {backend for backend, _, _ in CONFIGS if installed(backend)}
    return [config for config in CONFIGS if config[0] in backends]


def make_models(architecture: str, checkpoint: Path | None, workdir: Path, calibration: list[Path]) -> dict[str, Path]:
    """The checkpoint and its fp32 and int8 ONNX exports (int8 calibrated on the rover frames ``calibration``)."""
    from ssd_ros.vision.checkpoint import load_checkpoint, save_checkpoint
    from ssd_ros.vision.export import export_onnx_bytes, quantize_int8, write_export
    from ssd_ros.vision.image_codec import decode_compressed
    from ssd_ros.vision.model import VOC_CLASSES, build_model
    from ssd_ros.vision.model_card import ModelCard

    if checkpoint is None:
        torch.manual_seed(0)
        card = ModelCard.for_architecture(architecture, VOC_CLASSES, dataset="none (random init, benchmark)")
        checkpoint = save_checkpoint(workdir / f"{architecture}.pt", build_model(architecture, 21), card)
    model, card = load_checkpoint(checkpoint)
    onnx = export_onnx_bytes(model, card)
    images = [decode_compressed("jpeg", p.read_bytes()) for p in calibration] or [test_frame()]
    int8 = quantize_int8(onnx, images, progress=False)
    return {
        "pt": checkpoint,
        "onnx": write_export(onnx, workdir / f"{architecture}.onnx", "onnx"),
        "int8": write_export(int8, workdir / f"{architecture}_int8.onnx", "onnx"),
    }


def model_file(files: dict[str, Path], backend: str, precision: str) -> Path:
    """The file a configuration loads: the checkpoint for torch, else the fp32 or int8 export."""
    return files["pt"] if backend == "torch" else files["int8" if precision == "int8" else "onnx"]


def detector_for(files: dict[str, Path], backend: str, precision: str, threads: int):
    from ssd_ros.vision.detector import Detector

    return Detector.from_checkpoint(
        model_file(files, backend, precision),
        backend=backend,
        precision=precision,
        num_threads=threads,
        device="cpu",
        score_threshold=0.3,
    )


def in_process(files: dict[str, Path], threads: int, rgb: np.ndarray, iterations: int) -> dict[str, dict]:
    """Network and Detector-call samples of every configuration, interleaved call by call."""
    from ssd_ros.vision.inference import preprocess

    detectors = {}
    for backend, precision, _ in runnable_configs():
        name = f"{backend} {precision}"
        try:
            detectors[name] = detector_for(files, backend, precision, threads)
        except ValueError as error:
            print(f"skipping {name}: {error}", file=sys.stderr)
    torch.set_num_threads(threads)  # torch's count is process-wide: the torch detectors' own
    batches = {name: preprocess([rgb], d.network.spec) for name, d in detectors.items()}
    samples = {name: {"network": [], "call": [], "precision": d.precision} for name, d in detectors.items()}
    for name, detector in detectors.items():  # first-call allocations, kernel selection
        time_calls(lambda d=detector, b=batches[name]: d.network(b), 1, warmup=2)
    for _ in range(iterations):
        for name, detector in detectors.items():
            samples[name]["network"] += time_calls(lambda d=detector, b=batches[name]: d.network(b), 1, warmup=0)
            samples[name]["call"] += time_calls(lambda d=detector: d(rgb), 1, warmup=0)
    return samples


def frame_path_parts(files: dict[str, Path], rgb: np.ndarray, iterations: int) -> list[str]:
    """The steps around the network (one thread, p50 ms), each as it was before issue 22 and as it is now.

    The "before" rows re-run the earlier formulas, kept here only as the reference: the normalisation on
    interleaved (HWC) pixels, the softmax in torch and the box decoding of the candidates in torch. The in-graph
    row is the measured alternative to the Python preprocessing: OpenVINO's pre-processing API taking the uint8
    HWC frame (resize and normalisation in its graph), timed against the Python preprocessing plus the same
    network. The last columns time each step right after a network call, as the node runs it, before and now:
    the network has then evicted the step's data and code from the caches, and the same step takes up to twice
    as long as alone.
    """
    import cv2
    from torchvision.ops import batched_nms

    from ssd_ros.ros.images import image_msg_to_rgb, rgb_to_image_msg
    from ssd_ros.ros.messages import detections_to_msg
    from ssd_ros.vision.image_codec import decode_compressed, encode_compressed
    from ssd_ros.vision.inference import candidates, decode_boxes, postprocess, preprocess

    detector = detector_for(files, "openvino", "fp32", 1)
    spec = detector.network.spec
    all_boxes, scores = detector.network(preprocess([rgb], spec))
    logits = torch.log(scores)  # the softmax's input up to a constant per box: what torch's softmax got before
    detections = detector(rgb)
    msg = rgb_to_image_msg(rgb, encoding="rgb8")
    jpeg = encode_compressed(rgb, "jpeg")
    settings = {"score_threshold": 0.3, "nms_iou": 0.45, "max_detections": 100, "keep_outputs": detector._keep_outputs}
    keep = detector._keep_outputs
    anchor_idx, labels, candidate_scores = candidates(scores[0] * keep, 0.3, spec.topk_candidates)
    boxes = all_boxes[0][anchor_idx]
    # The same arithmetic as the Python decoding of the candidates before (the values do not change its time).
    decode_candidates = functools.partial(decode_boxes, boxes[None], spec.anchors[anchor_idx], spec.input_size)
    height, width = spec.input_size
    scale, offset = spec.normalisation

    def preprocess_before():  # normalised on HWC pixels: NumPy's inner loop over 3 channels
        small = cv2.resize(rgb.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        return (small * scale + offset).transpose(2, 0, 1)[None].copy()

    in_graph = _openvino_in_graph_preprocessing(files["onnx"], spec)
    paired = [[], []]
    for _ in range(iterations * 4):  # call by call, so load hits both alike
        paired[0] += time_calls(lambda: detector.network(preprocess([rgb], spec)), 1, warmup=0)
        paired[1] += time_calls(lambda: in_graph(rgb), 1, warmup=0)
    rows = [  # (step, before, now)
        ("decode raw Image (rgb8) -> array", None, lambda: image_msg_to_rgb(msg)),
        ("decode CompressedImage (JPEG)", None, lambda: decode_compressed("jpeg", jpeg)),
        ("preprocess (resize + normalise)", preprocess_before, lambda: preprocess([rgb], spec)),
        ("OpenVINO fp32: Python preprocess + network (interleaved with the next row)", None, paired[0]),
        ("the alternative: OpenVINO fp32 with preprocessing in its graph (uint8 HWC frame in)", None, paired[1]),
        ("softmax (now in the runtime's graph: part of the network time)",
         lambda: torch.softmax(logits[0], dim=-1), None),
        ("the candidates' box decoding and clipping (now in the runtime's graph, for every default box)",
         decode_candidates, None),
        ("post-processing (threshold, top-k, NMS; before: and the candidates' box decoding)",
         lambda: (decode_candidates(), postprocess(all_boxes, scores, spec, [rgb.shape], **settings)),
         lambda: postprocess(all_boxes, scores, spec, [rgb.shape], **settings)),
        ("- of which: candidates (score threshold, per-class top-k)", None,
         lambda: candidates(scores[0] * keep, 0.3, spec.topk_candidates)),
        ("- of which: per-class NMS", None, lambda: batched_nms(boxes, candidate_scores, labels, 0.45)),
        ("Detection2DArray from detections", None, lambda: detections_to_msg(detections, msg.header)),
    ]  # fmt: skip
    lines = [
        "### The frame path around the network (1 thread, p50 ms; before = as it was before issue 22)",
        "",
        "| step | before | now | before, right after a network call | now, right after a network call (the node) |",
        "|---|---:|---:|---:|---:|",
    ]
    batch = preprocess([rgb], spec)

    def cell(step, after_network: bool = False) -> str:  # a step to time, samples already taken, or nothing
        if step is None or (after_network and isinstance(step, list)):
            return "-"
        if isinstance(step, list):
            samples = step
        elif after_network:
            samples = []
            for _ in range(iterations * 4):
                detector.network(batch)
                samples += time_calls(step, 1, warmup=0)
        else:
            samples = time_calls(step, iterations * 4)
        return f"{percentiles(samples)[0]:.2f}"

    for name, before, now in rows:
        after = (cell(before, after_network=True), cell(now, after_network=True))
        lines.append(f"| {name} | {cell(before)} | {cell(now)} | {after[0]} | {after[1]} |")
    return [*lines, ""]


def _openvino_in_graph_preprocessing(onnx_path: Path, spec):
    """The fp32 network compiled by OpenVINO with its pre-processing API in front (uint8 HWC frame in)."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor, ResizeAlgorithm

    core = ov.Core()
    steps = PrePostProcessor(core.read_model(str(onnx_path)))
    steps.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_spatial_dynamic_shape()
    steps.input().model().set_layout(ov.Layout("NCHW"))
    steps.input().preprocess().convert_element_type(ov.Type.f32).resize(ResizeAlgorithm.RESIZE_LINEAR).mean(
        [255.0 * m for m in spec.image_mean]
    ).scale([255.0 * s for s in spec.image_std])
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY"}
    request = core.compile_model(steps.build(), "CPU", config).create_infer_request()
    return lambda rgb: request.infer({0: rgb[None]})


def node_round_trips(
    files: dict[str, Path], backend: str, precision: str, threads: int, args, workdir: Path, network
) -> dict | None:
    """The node end to end for one configuration (None when it cannot run here).

    Each round trip is followed by one call of ``network`` (the same configuration in this process), so the
    node / network ratio compares samples taken under the same load. Also the node's own timeline from its
    diagnostics (receive delay, queue wait, Detector call, image age at publish).
    """
    from ssd_ros.ros.images import rgb_to_image_msg

    source = model_file(files, backend, precision)
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=args.domain_id,
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads))  # fmt: skip
    log = workdir / f"node_{source.stem}_{backend}_{precision}_{threads}.log"
    params = (f"backend:={backend}", f"precision:={precision}", f"num_threads:={threads}")
    node = NodeUnderTest(source, env, log, *params)
    try:
        node.wait_ready()
        msg = rgb_to_image_msg(args.rgb, encoding="rgb8")
        node.round_trip(msg)
        trips, calls = [], []
        for _ in range(args.node_iterations):
            trips.append(node.round_trip(msg))
            calls += time_calls(network, 1, warmup=0)
        node.wait_diagnostics(lambda d: int(d.get("processed", 0)) >= args.node_iterations + 1)
        ratios = np.asarray(trips) / np.asarray(calls)
        return {"node": percentiles(trips), "ratio": float(np.median(ratios)), "diagnostics": dict(node.diagnostics)}
    except RuntimeError as error:
        print(f"node {backend} {precision} x{threads}: {error}", file=sys.stderr)
        return None
    finally:
        node.close()


def header(args, rgb: np.ndarray, checkpoints: dict[str, Path]) -> list[str]:
    """What ran where: CPU and its SIMD features, library versions, frame, weights, command."""
    from importlib.metadata import PackageNotFoundError, version

    from ssd_ros.vision.backends import cpu_has_bf16, cpu_has_fp16, cpu_summary

    def installed(package: str) -> str:
        try:
            return f"{package} {version(package)}"
        except PackageNotFoundError:
            return f"{package} not installed"

    cpu = cpu_summary()
    weights = [
        f"{architecture} `{path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}`"
        for architecture, path in checkpoints.items()
    ]
    untrained = [architecture for architecture in args.architectures if architecture not in checkpoints]
    if untrained:
        weights.append(f"{', '.join(untrained)} random init (speed does not depend on the weights)")
    trained = (
        []
        if args.train is None
        else [
            "- Models: trained here (`--train`, the default) with `training/train.py` from scratch on the "
            f"{len(args.calibration)} int8 calibration frames of `{shown(args.frames)}` (TRAIN_RECIPES in the "
            "script; printed on stderr as it starts) and kept in `--models-dir` (default "
            "`build/bench_inference_models`) for the next run; the agreement tables use the labelled frames they "
            "did not learn from"
        ]
    )
    return [
        "# Inference backends benchmark",
        "",
        f"- CPU: {cpu['model']}, {cpu['cores']} cores; SIMD: {', '.join(cpu['features']) or 'none of interest'}; "
        f"bf16 units: {'yes' if cpu_has_bf16() else 'no (OpenVINO bf16 falls back to fp32)'}; "
        f"fp16: {'yes' if cpu_has_fp16() else 'no (OpenVINO fp16 runs ' + ('bf16)' if cpu_has_bf16() else 'fp32)')}",
        f"- torch {torch.__version__}, {installed('onnxruntime')}, {installed('openvino')}, "
        f"Python {platform.python_version()}",
        f"- Frame: {rgb.shape[1]}x{rgb.shape[0]} real rover frame; weights: {', '.join(weights)}; "
        f"int8 calibrated on {len(args.calibration)} rover frames (not the agreement frames)",
        *trained,
        f"- Date: {time.strftime('%Y-%m-%d %H:%M')}; 1-minute load average at the start: {os.getloadavg()[0]:.1f}; "
        f"command: `scripts/run.sh python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`".rstrip(),
        "- Times are wall-clock p50 (p95) in ms on a shared machine; ratios are against torch fp32 measured in the",
        "  same loop (interleaved call by call), so load from other processes hits every configuration alike.",
        "",
    ]


def speed_section(files: dict[str, Path], threads: int, args, workdir: Path) -> tuple[list[str], dict]:
    """The speed table at one thread count, and the node's p50 per configuration."""
    samples = in_process(files, threads, args.rgb, args.iterations)
    reference_network = percentiles(samples["torch fp32"]["network"])[0]
    reference_call = percentiles(samples["torch fp32"]["call"])[0]
    lines = [
        f"### {threads} thread(s)",
        "",
        "| backend | precision (runs as) | network p50 (p95) | speed-up | `Detector` call p50 (p95) | speed-up "
        "| node end to end p50 (p95) | node / network | node speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    node_times, reference_node, timelines = {}, None, {}
    for name, sample in samples.items():
        backend, precision = name.split()
        (n50, n95), (c50, c95) = percentiles(sample["network"]), percentiles(sample["call"])
        network = _network_call(files, backend, precision, threads, args.rgb)
        result = node_round_trips(files, backend, precision, threads, args, workdir, network)
        if result is None:
            node_cells = "n/a | n/a | n/a"
        else:
            (e50, e95) = result["node"]
            reference_node = reference_node or e50
            node_times[(name, threads)] = e50
            node_cells = f"{e50:.1f} ({e95:.1f}) | {result['ratio']:.2f} | {reference_node / e50:.1f}x"
            timelines[name] = result["diagnostics"], e50
        lines.append(
            f"| {backend} | {precision} ({sample['precision']}) | {n50:.1f} ({n95:.1f}) | "
            f"{reference_network / n50:.1f}x | {c50:.1f} ({c95:.1f}) | {reference_call / c50:.1f}x | {node_cells} |"
        )
    return [*lines, "", *node_timeline(timelines, threads)], node_times


def _network_call(files: dict[str, Path], backend: str, precision: str, threads: int, rgb: np.ndarray):
    """One network call of a configuration in this process, to interleave with the node's round trips."""
    from ssd_ros.vision.inference import preprocess

    network = detector_for(files, backend, precision, threads).network
    batch = preprocess([rgb], network.spec)
    network(batch)  # first-call allocations
    return lambda: network(batch)


TIMELINE_KEYS = ("receive_delay_p50_ms", "queue_wait_p50_ms", "inference_time_p50_ms", "image_age_at_publish_p50_ms")


def node_timeline(timelines: dict[str, tuple[dict, float]], threads: int) -> list[str]:
    """Where a frame's round trip goes in each configuration's node (its diagnostics, p50 ms)."""
    lines = [
        f"#### Where the node's time goes ({threads} thread(s); the node's diagnostics over the same round trips)",
        "",
        "| configuration | camera -> node callback | callback -> worker | `Detector` call | stamp -> detections "
        "published | -> the camera's process (rest of the round trip) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, (diagnostics, round_trip) in timelines.items():
        cells = [diagnostics.get(key, "n/a") for key in TIMELINE_KEYS]
        try:
            rest = f"{round_trip - float(cells[3]):.1f}"
        except ValueError:
            rest = "n/a"
        lines.append(f"| {name} | {' | '.join(cells)} | {rest} |")
    return [*lines, ""]


def main() -> int:
    from ssd_ros.vision.image_codec import decode_compressed

    args = parse_args()
    os.environ.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=args.domain_id)
    # This process is the camera: raw frames as the launch file sends them (config/fastdds_large_frames.xml).
    os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(REPO_ROOT / "config" / "fastdds_large_frames.xml"))
    own = sorted(args.frames.glob("*.jpg"))
    args.rgb = decode_compressed("jpeg", own[0].read_bytes()) if own else test_frame()
    args.calibration = own[CALIBRATION_FRAMES]
    workdir = Path(tempfile.mkdtemp(prefix="bench_inference_"))
    checkpoints = dict(zip(args.architectures, args.checkpoints))
    if args.train is not None:
        training, held_out = split_frames(args.frames, args.calibration, TEST_FRAMES, workdir)
        args.agreement_frames = args.agreement_frames or held_out
        for architecture in args.train or args.architectures:
            if architecture not in checkpoints:
                checkpoints[architecture] = trained_checkpoint(architecture, training, args.models_dir)
    lines = header(args, args.rgb, checkpoints)
    summary = []
    for architecture in args.architectures:
        files = make_models(architecture, checkpoints.get(architecture), workdir, args.calibration)
        lines += [f"## {architecture}", ""]
        node_times = {}
        for threads in sorted({1, 4 if args.pi else os.cpu_count() or 1}):
            section, times = speed_section(files, threads, args, workdir)
            lines += section
            node_times.update(times)
        lines += frame_path_parts(files, args.rgb, args.iterations)
        if architecture.startswith("ssdlite"):
            lines += layer_profile_section(files)
        if args.agreement_frames and architecture in checkpoints:
            lines += agreement_section(files, args.agreement_frames, args.fidelity_video)
        best_name, best_threads = min(node_times, key=node_times.get)
        speedup = node_times[("torch fp32", best_threads)] / node_times[(best_name, best_threads)]
        summary.append((architecture, best_name, best_threads, node_times[(best_name, best_threads)], speedup))
        lines += stream_section(files, *best_name.split(), best_threads, args, workdir)
        print("\n".join(lines), flush=True)

    lines += ["## Summary: the fastest node configuration per architecture", ""]
    lines += [
        f"- {arch}: **{name} x{threads} thread(s)**, node end to end {ms:.1f} ms p50, "
        f"**{speedup:.1f}x** the torch fp32 node at the same thread count"
        for arch, name, threads, ms, speedup in summary
    ]
    write_report([*lines, ""], args.out)
    return 0


LIVE_THRESHOLD = 0.3
MARGIN = 0.05


class GreyLevelNoise:
    """A network that sees its input with uniform noise of +-1 grey level: the noise floor of agreement.

    No camera repeats a frame to within one grey level, so a configuration that agrees with fp32 as well as
    fp32 agrees with itself on such frames is as faithful as the footage can tell.
    """

    def __init__(self, network) -> None:
        self.network, self.spec, self.name = network, network.spec, network.name
        self.precision, self.num_threads, self.device = network.precision, network.num_threads, network.device
        self._rng = np.random.default_rng(0)
        self._grey_level = self.spec.normalisation[0].reshape(1, 3, 1, 1)

    def __call__(self, batch: np.ndarray):
        """The wrapped network on ``batch`` plus the noise."""
        noise = self._rng.uniform(-1.0, 1.0, batch.shape).astype(np.float32) * self._grey_level
        return self.network(batch + noise)


def agreement_section(files: dict[str, Path], frames: Path, video: Path | None) -> list[str]:
    """Every backend and precision against torch fp32: VOC AP and detections kept, on labelled frames.

    AP twice: of the live detections (score > ``LIVE_THRESHOLD``) and of the whole ranking, as ``evaluate.py``
    scores VOC.

    Also the share of fp32's detections kept on every frame of ``video`` (unlabelled rover footage): many
    more detections than a few labelled frames give. A detection near the threshold flips with any rounding,
    so the table also counts fp32's detections found above ``threshold - MARGIN``, the p95 score difference of
    the matched ones, and the same numbers for fp32 itself on frames with one grey level of noise.
    """
    from ssd_ros.evaluation.voc import VocSplit
    from ssd_ros.evaluation.voc_metric import evaluate_detections, matched_fraction
    from ssd_ros.tools.make_bag import video_frames
    from ssd_ros.vision.backends import OnnxRuntimeNetwork
    from ssd_ros.vision.detections import Detections, iou_matrix
    from ssd_ros.vision.detector import EVALUATION_SETTINGS, Detector
    from ssd_ros.vision.export import read_exported
    from ssd_ros.vision.image_codec import read_image_file

    split = VocSplit.from_folder(frames)
    images = [read_image_file(item.image_path) for item in split]
    annotations = [item.annotation() for item in split]
    footage = list(video_frames(video)[0]) if video is not None and video.is_file() else []

    def above(detections: list[Detections], threshold: float) -> list[Detections]:
        return [Detections(d.boxes[m], d.scores[m], d.labels[m], d.class_names) for d in detections
                for m in [d.scores > threshold]]  # fmt: skip

    def run(detector):
        # Also the AP of the whole ranking, as evaluate.py scores VOC (the SSD paper's setting): on a few frames
        # the AP of the live detections alone says little.
        live_max = detector.max_detections
        detector.score_threshold = EVALUATION_SETTINGS["score_threshold"]
        detector.max_detections = EVALUATION_SETTINGS["max_detections"]
        ranked_ap = evaluate_detections(detector.detect_batch(images), annotations, detector.class_names).map
        detector.score_threshold, detector.max_detections = LIVE_THRESHOLD - MARGIN, live_max
        loose = detector.detect_batch(images), [detector(frame) for frame in footage]
        labelled, on_footage = (above(d, LIVE_THRESHOLD) for d in loose)
        ap = evaluate_detections(labelled, annotations, detector.class_names).map
        return (ap, ranked_ap), labelled, on_footage, loose, detector.precision

    def score_error_p95(loose: tuple) -> float:
        errors = []
        for ref, other in zip(fp32[1] + fp32[2], loose[0] + loose[1]):
            if len(ref) and len(other):
                overlaps = iou_matrix(ref.boxes, other.boxes) * (ref.labels[:, None] == other.labels[None, :])
                best = overlaps.argmax(axis=1)
                found = overlaps[np.arange(len(ref)), best] >= 0.5
                errors += list(np.abs(ref.scores - other.scores[best])[found])
        return float(np.percentile(errors, 95)) if errors else float("nan")

    fp32 = run(detector_for(files, "torch", "fp32", 0))
    int8 = read_exported(files["int8"]).int8
    lines = [
        f"### Accuracy against torch fp32 ({len(images)} labelled frames: {described(frames)}; "
        f"score > {LIVE_THRESHOLD})",
        "",
        f"torch fp32: VOC07 AP {fp32[0][0]:.4f} ({fp32[0][1]:.4f} scoring the whole ranking, as evaluate.py), "
        f"{sum(map(len, fp32[1]))} detections on the labelled frames; "
        f"{sum(map(len, fp32[2]))} on the {len(footage)} frames of `{shown(video)}`. The int8 export kept the scheme "
        f"'{int8['scheme']}' (of {', '.join(map(repr, int8['measured']))}; p95 score error on its "
        f"{int8['agreement_images']} "
        "held-out frames: "
        + "; ".join(
            f"{scheme!r}: " + ", ".join(f"{runtime} {m['score_error_p95']:.3f}" for runtime, m in runtimes.items())
            for scheme, runtimes in int8["measured"].items()
        )
        + ").",
        "",
        "| configuration (runs as) | AP | AP - fp32 | "
        f"AP of the whole ranking (> {EVALUATION_SETTINGS['score_threshold']}) | AP - fp32 | "
        "fp32 detections matched (same class, IoU >= 0.5) | "
        f"matched on the footage | footage, found above {LIVE_THRESHOLD - MARGIN:.2f} | p95 score difference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fp32_network = detector_for(files, "torch", "fp32", 0)
    noisy = Detector(GreyLevelNoise(fp32_network.network), fp32_network.class_names, card=fp32_network.card,
                     label_map=fp32_network.card.label_map, warmup_runs=0)  # fmt: skip
    rows = [("torch fp32, +-1 grey level of input noise (the floor)", noisy)]
    # The int8 file's own fidelity, whatever this CPU's int8 kernels do (see OnnxRuntimeNetwork's optimize).
    exact = OnnxRuntimeNetwork(files["int8"], read_exported(files["int8"]).spec, precision="int8", optimize=False)
    exact_detector = Detector(exact, noisy.class_names, card=noisy.card, label_map=noisy.card.label_map, warmup_runs=0)
    rows.append(("int8, exact arithmetic (any CPU whose int8 kernels do not saturate)", exact_detector))
    others = [("onnxruntime", "fp32"), ("openvino", "fp32"), ("onnxruntime", "int8"), ("openvino", "int8")]
    for backend, precision in [*others, ("torch", "bf16"), ("openvino", "bf16"), ("openvino", "fp16")]:
        rows.append((f"{backend} {precision}", detector_for(files, backend, precision, 0)))
    for name, detector in rows:
        (ap, ranked_ap), labelled, on_footage, loose, runs_as = run(detector)
        kept = f"{matched_fraction(fp32[2], on_footage):.1%}" if footage else "-"
        kept_loose = f"{matched_fraction(fp32[2], loose[1]):.1%}" if footage else "-"
        lines.append(
            f"| {name} ({runs_as}) | {ap:.4f} | {ap - fp32[0][0]:+.4f} | {ranked_ap:.4f} | "
            f"{ranked_ap - fp32[0][1]:+.4f} | {matched_fraction(fp32[1], labelled):.1%} | "
            f"{kept} | {kept_loose} | {score_error_p95(loose):.3f} |"
        )
    return [*lines, ""]


def layer_profile_section(files: dict[str, Path], runs: int = 20) -> list[str]:
    """Where OpenVINO's time goes, fp32 against int8, at 1 thread: ms per layer kind and kernel (PERF_COUNT)."""
    import openvino as ov

    core = ov.Core()
    totals: dict[str, dict[str, float]] = {}
    for precision in ("fp32", "int8"):
        model = core.read_model(str(files["int8" if precision == "int8" else "onnx"]))
        compiled = core.compile_model(
            model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1, "PERF_COUNT": True}
        )
        request = compiled.create_infer_request()
        height, width = (int(v) for v in model.input(0).get_partial_shape()[2:].get_shape())
        batch = np.zeros((1, 3, height, width), np.float32)
        for _ in range(3):
            request.infer({0: batch})
        kinds: dict[str, float] = {}
        for _ in range(runs):
            request.infer({0: batch})
            for layer in request.get_profiling_info():
                key = f"{layer.node_type} ({layer.exec_type})"
                kinds[key] = kinds.get(key, 0.0) + layer.real_time.total_seconds() * 1e3 / runs
        totals[precision] = kinds
    keys = sorted(set(totals["fp32"]) | set(totals["int8"]), key=lambda k: -max(t.get(k, 0.0) for t in totals.values()))
    lines = [
        "### Where SSDlite's time goes: OpenVINO fp32 against int8 (1 thread, ms per inference, PERF_COUNT)",
        "",
        "| layer (kernel) | fp32 | int8 |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {key} | {totals['fp32'].get(key, 0.0):.2f} | {totals['int8'].get(key, 0.0):.2f} |"
        for key in keys
        if max(t.get(key, 0.0) for t in totals.values()) >= 0.05
    ]
    lines.append(f"| **sum of layers** | {sum(totals['fp32'].values()):.2f} | {sum(totals['int8'].values()):.2f} |")
    return [*lines, ""]


def stream_section(files, backend: str, precision: str, threads: int, args, workdir: Path) -> list[str]:
    """A 30 Hz camera into the node for ``--stream-s`` seconds with one configuration."""
    from ssd_ros.ros.images import rgb_to_image_msg

    source = model_file(files, backend, precision)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    params = (f"backend:={backend}", f"precision:={precision}", f"num_threads:={threads}")
    node = NodeUnderTest(source, env, workdir / "stream.log", *params)
    try:
        node.wait_ready()
        result = stream(node, rgb_to_image_msg(args.rgb, encoding="rgb8"), 30.0, args.stream_s)
    finally:
        code = node.close()
    return [
        f"### 30 Hz camera for {args.stream_s:g} s: {backend} {precision} x{threads} thread(s)",
        "",
        "| quantity | value |",
        "|---|---:|",
        f"| frames sent (rate) | {result['sent']} ({result['sent_hz']:.1f} Hz) |",
        f"| frames processed (rate) | {result['answered']} ({result['processed_hz']:.1f} Hz) |",
        f"| received by the node / dropped for a newer one | {result['node_received']} / {result['node_dropped']} |",
        f"| image age at publish (node, mean) / at a subscriber (mean, p95) | {result['node_age_mean_ms']:.0f} / "
        f"{result['age_mean_ms']:.0f}, {result['age_p95_ms']:.0f} ms |",
        f"| node inference p50 during the stream | {result['node_inference_p50_ms']:.1f} ms |",
        f"| node RSS start / end | {result['rss_start_mb']:.0f} / {result['rss_end_mb']:.0f} MB |",
        f"| node exit code after SIGINT | {code} |",
        "",
    ]


if __name__ == "__main__":
    sys.exit(main())
