"""int8 against fp32 speed on this CPU, per quantiser: the network alone at 1 thread, calls interleaved.

For each trained checkpoint, the exports ``bench_int8_weights.py`` compares (the export's pick, the other
quantiser's 8-bit file, the 7-bit export) and the fp32 export, each run by ONNX Runtime and by
OpenVINO as the detector runs it on this CPU (int8 weights fitted to it at load), on one preprocessed rover
frame. The calls go round the configurations in turn, so load from other processes hits each alike; ratios
are against the fp32 export in the same runtime. Results: stdout and ``docs/benchmarks/int8_speed.md``.

    scripts/run.sh python benchmarks/bench_int8_speed.py [--checkpoints a.pt b.pt] [--rounds 12]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_detector import write_report
from bench_inference import CALIBRATION, CALIBRATION_FRAMES, shown
from bench_int8_weights import checkpoint_parser, int8_exports, parsed


def parse_args() -> argparse.Namespace:
    parser = checkpoint_parser(__doc__, "int8_speed.md")
    parser.add_argument("--rounds", type=int, default=12, help="calls of each configuration, interleaved")
    return parsed(parser)


def main() -> int:
    from ssd_ros.vision.backends import cpu_summary
    from ssd_ros.vision.cpu import this_cpu
    from ssd_ros.vision.image_codec import read_image_file

    args = parse_args()
    torch.set_num_threads(1)
    workdir = Path(tempfile.mkdtemp(prefix="bench_int8_speed_"))
    calibration = [read_image_file(p) for p in sorted(CALIBRATION.glob("*.jpg"))[CALIBRATION_FRAMES]]
    summary = cpu_summary()
    lines = [
        "# int8 against fp32 speed, per quantiser (network alone, 1 thread)",
        "",
        f"- CPU: {summary['model']}, {summary['cores']} cores; SIMD: {', '.join(summary['features']) or 'none'}; "
        f"int8 kernels saturate with 8-bit weights: **{'yes' if this_cpu().int8_saturates else 'no'}**",
        f"- torch {torch.__version__}, Python {platform.python_version()}; int8 calibrated on {len(calibration)} "
        f"rover frames; {args.rounds} interleaved calls per configuration on one rover frame",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M')}; 1-minute load average at the start: "
        f"{os.getloadavg()[0]:.1f}; command: `scripts/run.sh python benchmarks/{Path(__file__).name} "
        f"{' '.join(sys.argv[1:])}`",
        "",
    ]
    for checkpoint in args.checkpoints:
        lines += checkpoint_section(checkpoint, calibration[0], calibration, args.rounds, workdir)
    write_report([*lines, ""], args.out)
    return 0


def checkpoint_section(checkpoint: Path, frame: np.ndarray, calibration: list, rounds: int, workdir: Path) -> list:
    """The speed table for one checkpoint."""
    from ssd_ros.vision.backends import OnnxRuntimeNetwork, OpenVinoNetwork
    from ssd_ros.vision.export import read_exported
    from ssd_ros.vision.inference import preprocess

    card, fp32, files, _ = int8_exports(checkpoint, calibration, workdir)
    spec = read_exported(fp32).spec
    batch = preprocess([frame], spec)
    networks = {}
    for runtime, network in (("onnxruntime", OnnxRuntimeNetwork), ("openvino", OpenVinoNetwork)):
        networks[runtime, "fp32 export"] = network(fp32, spec, precision="fp32", num_threads=1)
        for name, path in files.items():
            networks[runtime, name] = network(path, spec, precision="int8", num_threads=1)
    times = {key: [] for key in networks}
    for network in networks.values():
        network(batch)  # the first call compiles and allocates
    for _ in range(rounds):
        for key, network in networks.items():
            start = time.perf_counter()
            network(batch)
            times[key].append(time.perf_counter() - start)
    lines = [
        f"## {card.architecture} (`{shown(checkpoint)}`)",
        "",
        "| runtime | configuration | network p50 (ms) | speed-up over fp32 |",
        "|---|---|---:|---:|",
    ]
    for (runtime, name), measured in times.items():
        reference = np.median(times[runtime, "fp32 export"])
        lines.append(
            f"| {runtime} | {name} | {1000 * np.median(measured):.1f} | {reference / np.median(measured):.2f}x |"
        )
        print(lines[-1], flush=True)
    return [*lines, ""]


if __name__ == "__main__":
    sys.exit(main())
