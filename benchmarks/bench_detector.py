"""Detector latency and throughput: torchvision forward vs core Detector vs the node over DDS.

In one run, on one 640x480 frame:

(a) torchvision forward of the model (``model([tensor])``: its own resize/normalise, network, post-processing),
(b) the core ``Detector`` call on the uint8 RGB frame,
(c) end to end through the ``detector`` node over DDS (publish ``sensor_msgs/Image`` -> receive the
    ``Detection2DArray`` with that stamp), one frame at a time;

then a 30 Hz stream of 640x480 frames for ``--stream-s`` seconds: processed rate, dropped frames, image
age at publish, RSS of the node process at the start and the end. Finally the FLOPs of both
architectures (``torch.utils.flop_counter.FlopCounterMode``) against this CPU's measured sgemm rate.

Results go to stdout and to ``docs/benchmarks/detector.md`` as markdown. Models are randomly initialised
unless ``--checkpoint`` is given (timing does not depend on the weights; ``score_threshold`` 0.3 on a random
head keeps the post-processing realistic: few boxes pass).

    . scripts/env.sh && python benchmarks/bench_detector.py            # SSD300, 30 s stream
    python benchmarks/bench_detector.py --architecture ssdlite320_mobilenet_v3 --stream-s 10
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms.functional import to_tensor

REPO_ROOT = Path(__file__).resolve().parents[1]


def detector_executable() -> Path:
    """The installed ``detector``: this workspace's install/ here, the colcon workspace's on a robot."""
    from ament_index_python.packages import get_package_prefix

    return Path(get_package_prefix("ssd_ros")) / "lib" / "ssd_ros" / "detector"


FRAME_SHAPE = (480, 640, 3)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", default="ssd300_vgg16", help="model to time (default: %(default)s)")
    parser.add_argument("--checkpoint", type=Path, help="use this checkpoint instead of a random-init model")
    parser.add_argument("--iterations", type=int, default=20, help="timed calls per measurement (a, b, c)")
    parser.add_argument("--stream-s", type=float, default=30.0, help="length of the 30 Hz stream (s)")
    parser.add_argument("--stream-hz", type=float, default=30.0, help="rate of the stream (Hz)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks" / "detector.md")
    parser.add_argument(
        "--threads", type=int, help="torch/OpenMP threads in this process and the node (default: torch's choice)"
    )
    parser.add_argument(
        "--domain-id",
        default=os.environ.get("ROS_DOMAIN_ID", str(os.getpid() % 100 + 101)),
        help="ROS_DOMAIN_ID for this run (default: $ROS_DOMAIN_ID, as scripts/run.sh sets it)",
    )
    return parser.parse_args()


def test_frame() -> np.ndarray:
    """A real 640x480 PiCar camera frame when ../shared/data is there, else a synthetic one."""
    frames = sorted((REPO_ROOT.parent / "shared" / "data" / "picar_camera" / "detection" / "test").glob("*.jpg"))
    if frames:
        from ssd_ros.vision.image_codec import decode_compressed

        return decode_compressed("jpeg", frames[0].read_bytes())
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, FRAME_SHAPE, dtype=np.uint8)


def percentiles(samples_s: list[float]) -> tuple[float, float]:
    """(p50, p95) in milliseconds."""
    values = np.asarray(samples_s) * 1e3
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def time_calls(fn, iterations: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matmul rate of this machine with torch's current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = min(time_calls(lambda: torch.matmul(a, b), repeats, warmup=1))
    return 2 * n**3 / best / 1e9


def forward_flops(model: torch.nn.Module, rgb: np.ndarray) -> int:
    """FLOPs (2 per multiply-add) of one torchvision forward on ``rgb`` (network incl. its transform)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model([to_tensor(rgb)])
    return counter.get_total_flops()


class NodeUnderTest:
    """The real ``detector`` executable plus this process's publisher/subscriber for it."""

    def __init__(
        self, checkpoint: Path, env: dict[str, str], log_path: Path, *params: str, camera_qos: str = "reliable"
    ):
        """Start the node on ``checkpoint`` (extra ``-p name:=value`` in ``params``) and this side's endpoints.

        ``camera_qos`` is this side's image publisher: ``reliable`` (latency runs, no transport loss; the
        node is told to subscribe reliably) or ``best_effort`` (as cameras publish; the node keeps its default).
        """
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from vision_msgs.msg import Detection2DArray

        self.log = open(log_path, "w")  # noqa: SIM115 - closed in close()
        executable = detector_executable()
        self.proc = subprocess.Popen(
            [sys.executable, str(executable), "--ros-args", "--params-file", str(REPO_ROOT / "config/detector.yaml"),
             "-p", f"model_path:={checkpoint}", "-p", "device:=cpu", "-r", "__ns:=/bench",
             "-p", "image_topic:=/bench/image_raw",
             *(["-p", "qos_reliability:=reliable"] if camera_qos == "reliable" else []),
             *(arg for param in params for arg in ("-p", param))],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("bench_detector_client", context=self.context)
        self.received: dict[tuple[int, int], float] = {}
        self.diagnostics: dict[str, str] = {}
        self.cond = threading.Condition()
        reliability = ReliabilityPolicy.RELIABLE if camera_qos == "reliable" else ReliabilityPolicy.BEST_EFFORT
        self.pub = self.node.create_publisher(Image, "/bench/image_raw", QoSProfile(depth=1, reliability=reliability))
        self.sub = self.node.create_subscription(Detection2DArray, "/bench/detections", self._on_detections, 100)
        from diagnostic_msgs.msg import DiagnosticArray

        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_detections(self, msg) -> None:
        now = time.time()
        with self.cond:
            self.received[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = now
            self.cond.notify_all()

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith("/bench/detector"):
                with self.cond:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}
                    self.cond.notify_all()

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait until the node is up and matched both ways."""
        end = time.monotonic() + timeout_s
        while self.pub.get_subscription_count() == 0 or self.sub.get_publisher_count() == 0:
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"detector node did not come up (see {self.log.name})")
            time.sleep(0.05)
        time.sleep(1.0)  # let discovery settle both ways

    def wait_diagnostics(self, predicate, timeout_s: float = 10.0) -> None:
        """Wait until the node's latest diagnostics satisfy ``predicate`` (RuntimeError after ``timeout_s``)."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.diagnostics and predicate(self.diagnostics), timeout_s):
                raise RuntimeError("the node's diagnostics did not report the frames sent")

    def publish(self, msg) -> tuple[int, int]:
        """Stamp ``msg`` with the wall clock (the node's clock) and publish it."""
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
        self.pub.publish(msg)
        return msg.header.stamp.sec, msg.header.stamp.nanosec

    def round_trip(self, msg, timeout_s: float = 60.0) -> float:
        """Seconds from publishing ``msg`` to receiving its detections."""
        start = time.perf_counter()
        stamp = self.publish(msg)
        with self.cond:
            if not self.cond.wait_for(lambda: stamp in self.received, timeout_s):
                raise RuntimeError("no detections for a published frame")
        return time.perf_counter() - start

    def rss_mb(self) -> float:
        """Resident memory of the node process."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def close(self) -> int:
        """Ctrl-C the node, tear down this side; the node's exit code."""
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.executor.shutdown()
        self.node.destroy_node()
        import rclpy

        rclpy.shutdown(context=self.context)
        self.log.close()
        return code


def stream(node: NodeUnderTest, msg, rate_hz: float, duration_s: float) -> dict[str, float]:
    """Publish at ``rate_hz`` for ``duration_s``; collect what came back and the node's own counters."""
    sent: dict[tuple[int, int], float] = {}
    with node.cond:
        node.received.clear()
    rss_start = node.rss_mb()
    period = 1.0 / rate_hz
    start = time.monotonic()
    next_time = start
    while time.monotonic() - start < duration_s:
        stamp = node.publish(msg)
        sent[stamp] = stamp[0] + stamp[1] * 1e-9
        next_time += period
        time.sleep(max(0.0, next_time - time.monotonic()))
    elapsed = time.monotonic() - start
    time.sleep(3.0)  # the last frame's inference and one diagnostics period
    with node.cond:
        received = dict(node.received)
        diagnostics = dict(node.diagnostics)
    rss_end = node.rss_mb()
    ages = [received[s] - sent[s] for s in sent if s in received]
    return {
        "sent": len(sent),
        "sent_hz": len(sent) / elapsed,
        "answered": len(ages),
        "processed_hz": len(ages) / elapsed,
        "age_mean_ms": float(np.mean(ages)) * 1e3,
        "age_p95_ms": float(np.percentile(ages, 95)) * 1e3,
        "node_age_mean_ms": float(diagnostics.get("image_age_at_publish_mean_ms", "nan")),
        "node_received": int(diagnostics.get("received", -1)),
        "node_dropped": int(diagnostics.get("dropped_frames", -1)),
        "node_inference_p50_ms": float(diagnostics.get("inference_time_p50_ms", "nan")),
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_end,
    }


def main() -> int:
    args = parse_args()
    if args.threads:
        # On a shared, loaded machine OpenMP teams wider than the free cores stall (seconds per frame);
        # a fixed count keeps (a), (b) and (c) comparable.
        torch.set_num_threads(args.threads)
        os.environ.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    from ssd_ros.vision.checkpoint import load_checkpoint

    rgb = test_frame()
    workdir = Path(tempfile.mkdtemp(prefix="bench_detector_"))
    checkpoint = args.checkpoint or random_checkpoint(args.architecture, workdir / "model.pt")
    model, card = load_checkpoint(checkpoint, device="cpu")
    lines = [
        f"# Detector benchmark ({card.architecture})",
        "",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} thread(s)), Python {platform.python_version()}",
        f"- Frame: {rgb.shape[1]}x{rgb.shape[0]} RGB; model: {checkpoint.name if args.checkpoint else 'random init'}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M')}; command: `python benchmarks/{Path(__file__).name} "
        f"{' '.join(sys.argv[1:])}`".rstrip(),
        "",
    ]
    measured = measure_latency_and_stream(args, checkpoint, model, card.class_names, rgb, workdir)
    lines += latency_and_stream_section(args, measured)
    lines += flops_section(model, card.architecture, measured["a"], rgb, args.iterations)
    write_report(lines, args.out)
    return 0


def random_checkpoint(architecture: str, path: Path) -> Path:
    """A checkpoint of a randomly initialised ``architecture`` (seed 0) for VOC's classes."""
    from ssd_ros.vision.checkpoint import save_checkpoint
    from ssd_ros.vision.model import VOC_CLASSES, build_model
    from ssd_ros.vision.model_card import ModelCard

    torch.manual_seed(0)
    card = ModelCard.for_architecture(architecture, VOC_CLASSES, dataset="none (random init, benchmark)")
    return save_checkpoint(path, build_model(architecture, len(VOC_CLASSES) + 1), card)


def measure_latency_and_stream(args, checkpoint: Path, model, class_names, rgb: np.ndarray, workdir: Path) -> dict:
    """Per-call seconds of (a), (b) and (c), then the stream through the node, with load averages."""
    from ssd_ros.ros.images import rgb_to_image_msg
    from ssd_ros.vision.detector import Detector

    # The node first: its start-up (torch import, model load) must not overlap the in-process timing.
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=args.domain_id,
               PYTHONUNBUFFERED="1")  # fmt: skip
    os.environ.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=args.domain_id)
    node = NodeUnderTest(checkpoint, env, workdir / "node.log")
    measured: dict = {}
    try:
        node.wait_ready()
        # (a) torchvision forward, (b) the core Detector, (c) the node over DDS: same model, frame and thresholds.
        # Interleaved call by call, so load from other processes on a shared machine hits all three alike.
        detector = Detector(model, class_names, score_threshold=0.3, nms_iou=0.45, max_detections=100)
        tensor = to_tensor(rgb)
        msg = rgb_to_image_msg(rgb, encoding="rgb8")

        def forward():
            # torchvision's own post-processing with the Detector's thresholds.
            model.score_thresh, model.nms_thresh, model.detections_per_img = 0.3, 0.45, 100
            with torch.inference_mode():
                model([tensor])

        calls = {"a": forward, "b": lambda: detector(rgb), "c": lambda: node.round_trip(msg)}
        for fn in calls.values():  # first-call allocations
            fn()
        measured.update({key: [] for key in calls})
        for _ in range(args.iterations):
            for key, fn in calls.items():
                measured[key] += time_calls(fn, 1, warmup=0)
        measured["load_during_latency"] = os.getloadavg()[0]
        measured["stream"] = stream(node, msg, args.stream_hz, args.stream_s)
        measured["load_during_stream"] = os.getloadavg()[0]
    finally:
        measured["exit_code"] = node.close()
    return measured


def latency_and_stream_section(args, measured: dict) -> list[str]:
    """Markdown: the three latencies against (a), the stream's quantities and the targets."""
    (a50, a95), (b50, b95), (c50, c95) = (percentiles(measured[key]) for key in "abc")
    streamed = measured["stream"]
    lines = [
        f"## Latency, one frame at a time ({args.iterations} calls each)",
        "",
        "| measurement | p50 ms | p95 ms | p50 ratio to (a) |",
        "|---|---:|---:|---:|",
        f"| (a) torchvision forward `model([tensor])` | {a50:.1f} | {a95:.1f} | 1.00 |",
        f"| (b) core `Detector(rgb)` | {b50:.1f} | {b95:.1f} | {b50 / a50:.3f} |",
        f"| (c) node over DDS (Image -> Detection2DArray) | {c50:.1f} | {c95:.1f} | {c50 / a50:.3f} |",
        "",
        f"Target c/a <= 1.10: **{'met' if c50 / a50 <= 1.10 else 'missed'}** ({c50 / a50:.3f}). "
        f"1-minute load average after these calls: {measured['load_during_latency']:.1f} on {os.cpu_count()} cores.",
        "",
        f"## {args.stream_hz:g} Hz stream for {args.stream_s:g} s",
        "",
        "| quantity | value |",
        "|---|---:|",
        f"| frames sent (rate) | {streamed['sent']} ({streamed['sent_hz']:.1f} Hz) |",
        f"| frames answered (processed rate) | {streamed['answered']} ({streamed['processed_hz']:.2f} Hz) |",
        f"| frames received by the node / dropped (newer frame replaced them) | {streamed['node_received']} / "
        f"{streamed['node_dropped']} |",
        f"| image age at publish, node diagnostics (mean of last 100) | {streamed['node_age_mean_ms']:.0f} ms |",
        f"| image age at receipt by a subscriber, mean / p95 | {streamed['age_mean_ms']:.0f} / "
        f"{streamed['age_p95_ms']:.0f} ms |",
        f"| node inference time p50 during the stream | {streamed['node_inference_p50_ms']:.0f} ms |",
        f"| node RSS at start / end (growth) | {streamed['rss_start_mb']:.0f} / {streamed['rss_end_mb']:.0f} MB "
        f"({streamed['rss_end_mb'] - streamed['rss_start_mb']:+.1f} MB) |",
        f"| node exit code after SIGINT | {measured['exit_code']} |",
        f"| 1-minute load average after the stream | {measured['load_during_stream']:.1f} |",
        "",
    ]
    age_ratio = streamed["node_age_mean_ms"] / streamed["node_inference_p50_ms"]
    rss_growth = streamed["rss_end_mb"] - streamed["rss_start_mb"]
    return lines + [
        f"Target image age <= 1.5 x model time: **{'met' if age_ratio <= 1.5 else 'missed'}** "
        f"({age_ratio:.2f} x the node's inference p50). "
        f"Target RSS growth < 50 MB: **{'met' if rss_growth < 50 else 'missed'}** ({rss_growth:+.1f} MB).",
        "",
    ]


def flops_section(model, architecture: str, forward_s: list[float], rgb: np.ndarray, iterations: int) -> list[str]:
    """Markdown: FLOPs of both architectures against this CPU's sgemm rate (``forward_s``: (a) of ``model``)."""
    from ssd_ros.vision.model import ARCHITECTURES, VOC_CLASSES, build_model

    gflops_rate = sgemm_gflops()
    lines = [
        "## FLOPs vs this CPU",
        "",
        f"Measured sgemm (2048x2048 float32 `torch.matmul`, {torch.get_num_threads()} thread(s)): "
        f"**{gflops_rate:.0f} GFLOP/s**.",
        "",
        "| architecture | GFLOPs / frame | forward p50 ms (a) | FLOPs / sgemm rate ms | achieved GFLOP/s | "
        "% of sgemm |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    tensor = to_tensor(rgb)
    for name in ARCHITECTURES:
        arch_model = model if name == architecture else build_model(name, len(VOC_CLASSES) + 1)
        flops = forward_flops(arch_model, rgb)
        if name == architecture:
            times = forward_s
        else:
            with torch.inference_mode():
                times = time_calls(lambda m=arch_model: m([tensor]), iterations)
        p50 = percentiles(times)[0]
        bound_ms = flops / (gflops_rate * 1e9) * 1e3
        lines.append(
            f"| {name} | {flops / 1e9:.1f} | {p50:.1f} | {bound_ms:.1f} | {flops / (p50 * 1e-3) / 1e9:.0f} | "
            f"{bound_ms / p50 * 100:.0f}% |"
        )
    lines.append("")
    return lines


def write_report(lines: list[str], out: Path) -> None:
    """Print the markdown report and write it to ``out``."""
    text = "\n".join(lines)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
