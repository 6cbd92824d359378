"""Camera -> detector node delivery over DDS on one machine: how many frames of a 30 Hz camera reach the node.

For each configuration a camera-like publisher process sends frames at 30 Hz for ``--seconds`` to the real
``detector`` node (SSDlite, ONNX Runtime: fast enough that the node's own receive path is not the limit),
and the node's ``received`` counter (``/diagnostics``) says how many arrived:

* raw 640x480 and 1280x720 ``rgb8`` frames, best effort (as cameras publish) into the node's default
  best-effort subscription, with Fast DDS's default transports and with ``config/fastdds_large_frames.xml``
  in the camera process (what ``scripts/env.sh`` and ``rover.launch.py`` set);
* the alternatives for a Pi + laptop split: reliable raw frames (``qos_reliability:=reliable``) and JPEG
  ``CompressedImage`` (``compressed:=true``).

``--loss N`` counts what happens to every frame instead (issue 20: a reliable raw frame that went unanswered
in the detector node tests with the profile in every process): N stamped raw VGA frames per configuration,
reliable and best effort, with Fast DDS's defaults and with ``config/fastdds_large_frames.xml`` in *every*
process (node and camera), sent as a 30 Hz stream and, for reliable, also one at a time as the tests send them
(each frame waits for its answer). Per frame: answered (its ``detections`` came back), late (answered more than
``LATE_S`` after it was sent), and per configuration the node's counters: lost on the way (sent - received)
and replaced in the node (``dropped_frames``: newest-only by design, not a loss of the transport).

Results: stdout and ``docs/benchmarks/transport.md`` (each mode rewrites its own section).

    scripts/run.sh python benchmarks/bench_transport.py --seconds 20
    scripts/run.sh python benchmarks/bench_transport.py --loss 2000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EXECUTABLE = REPO_ROOT / "install" / "ssd_ros" / "lib" / "ssd_ros" / "detector"
PROFILE = REPO_ROOT / "config" / "fastdds_large_frames.xml"
TOPIC = "/bench/image_raw"
TITLE = "# Camera -> detector delivery over DDS (one machine)"
# name, (width, height), camera reliability, compressed, camera process uses PROFILE
CASES = [
    ("raw VGA, best effort, Fast DDS defaults", (640, 480), "best_effort", False, False),
    ("raw VGA, best effort, fastdds_large_frames.xml", (640, 480), "best_effort", False, True),
    ("raw 1280x720, best effort, Fast DDS defaults", (1280, 720), "best_effort", False, False),
    ("raw 1280x720, best effort, fastdds_large_frames.xml", (1280, 720), "best_effort", False, True),
    ("raw VGA, reliable, Fast DDS defaults", (640, 480), "reliable", False, False),
    ("JPEG VGA, best effort, Fast DDS defaults", (640, 480), "best_effort", True, False),
]
# --loss: name, node and camera reliability, profile in every process, how the camera sends
LOSS_CASES = [
    ("best effort, Fast DDS defaults, 30 Hz stream", "best_effort", False, "stream"),
    ("best effort, profile in every process, 30 Hz stream", "best_effort", True, "stream"),
    ("reliable, Fast DDS defaults, 30 Hz stream", "reliable", False, "stream"),
    ("reliable, profile in every process, 30 Hz stream", "reliable", True, "stream"),
    ("reliable, Fast DDS defaults, one at a time", "reliable", False, "ping"),
    ("reliable, profile in every process, one at a time", "reliable", True, "ping"),
]
# --fresh: one frame per new writer (the tests' first frame after their probe matched a node), as LOSS_CASES
FRESH_CASES = [
    ("reliable, Fast DDS defaults, a new publisher per frame", "reliable", False, "fresh"),
    ("reliable, profile in every process, a new publisher per frame", "reliable", True, "fresh"),
    ("reliable, Fast DDS defaults, one at a time, node stopped 1.5 s every 5 s", "reliable", False, "stall"),
    ("reliable, profile in every process, one at a time, node stopped 1.5 s every 5 s", "reliable", True, "stall"),
]
STALL_S, STALL_PERIOD_S = 1.5, 5.0
# An answer later than this is of no use to a follower steering at 30 Hz (and well past any retransmission).
LATE_S = 1.0
# One at a time: how long a frame waits for its answer before the next is sent (the tests wait 60 s).
PING_TIMEOUT_S = 10.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each 30 Hz stream")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks" / "transport.md")
    parser.add_argument("--loss", type=int, metavar="N", help="count lost/late/answered frames over N frames per row")
    parser.add_argument("--fresh", type=int, metavar="N", help="the same, a new publisher per frame / a stopped node")
    parser.add_argument("--camera", nargs=5, metavar=("W", "H", "RELIABILITY", "COMPRESSED", "SECONDS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--probe", nargs=3, metavar=("RELIABILITY", "FRAMES", "PATTERN"), help=argparse.SUPPRESS)
    return parser.parse_args()


def camera(width: int, height: int, reliability: str, compressed: bool, seconds: float) -> None:
    """The publisher process: a real rover frame resized to ``width`` x ``height`` at 30 Hz; prints the count."""
    import cv2
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image

    from ssd_ros.ros.images import rgb_to_compressed_msg, rgb_to_image_msg

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_detector import test_frame

    rgb = cv2.resize(test_frame(), (width, height))
    rclpy.init()
    node = rclpy.create_node("bench_camera")
    policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    qos = QoSProfile(depth=5, reliability=policy)
    if compressed:
        publisher, msg = node.create_publisher(CompressedImage, TOPIC + "/compressed", qos), rgb_to_compressed_msg(rgb)
    else:
        publisher, msg = node.create_publisher(Image, TOPIC, qos), rgb_to_image_msg(rgb, encoding="rgb8")
    end = time.monotonic() + 60
    while publisher.get_subscription_count() == 0 and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(1.0)  # discovery settles both ways
    sent, start = 0, time.monotonic()
    next_time = start
    while time.monotonic() - start < seconds:
        publisher.publish(msg)
        sent += 1
        next_time += 1 / 30
        time.sleep(max(0.0, next_time - time.monotonic()))
    time.sleep(0.5)
    print(f"SENT {sent}", flush=True)
    node.destroy_node()
    rclpy.shutdown()


def probe(reliability: str, frames: int, pattern: str) -> None:
    """The camera of ``--loss``: ``frames`` stamped raw VGA frames; prints a RESULT json line with what came back.

    ``stream`` publishes at 30 Hz whatever comes back; ``ping`` sends the next frame only once the previous one
    is answered (or after ``PING_TIMEOUT_S``), as the detector node tests do; ``fresh`` is ``ping`` from a new
    publisher per frame, sent as soon as the publisher counts the node's subscription (as the tests' first frame).
    """
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header
    from tqdm import tqdm
    from vision_msgs.msg import Detection2DArray

    from ssd_ros.ros.images import rgb_to_image_msg

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_detector import test_frame

    rclpy.init()
    node = rclpy.create_node("bench_camera")
    lock = threading.Condition()
    sent_at: dict[int, float] = {}
    answered_at: dict[int, float] = {}
    counters: list[dict[str, str]] = []

    def on_detections(msg) -> None:
        with lock:
            answered_at.setdefault(msg.header.stamp.sec, time.monotonic())
            lock.notify_all()

    def on_diagnostics(msg) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if status.name.startswith("/bench/detector") and "received" in values:
                with lock:
                    counters.append(values)

    policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    # A camera driver's queue (depth 5); the tests' probe uses 10: one frame at a time never fills either.
    publisher = node.create_publisher(Image, TOPIC, QoSProfile(depth=5, reliability=policy))
    detections = node.create_subscription(Detection2DArray, "/bench/detections", on_detections, 100)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin)
    spinner.start()
    end = time.monotonic() + 120
    while (publisher.get_subscription_count() == 0 or detections.get_publisher_count() == 0) and time.monotonic() < end:
        time.sleep(0.05)
    msg = rgb_to_image_msg(test_frame(), Header(frame_id="camera_optical"), "rgb8")
    next_time = time.monotonic()
    for index in tqdm(range(1, frames + 1), desc=f"{reliability} {pattern}", mininterval=10, file=sys.stderr):
        if pattern == "fresh":  # a new writer per frame, sent as soon as it has matched the node's reader
            node.destroy_publisher(publisher)
            publisher = node.create_publisher(Image, TOPIC, QoSProfile(depth=5, reliability=policy))
            while publisher.get_subscription_count() == 0:
                time.sleep(0.01)
        msg.header.stamp.sec = index  # the answer's header is the frame's: the stamp names the frame
        with lock:
            sent_at[index] = time.monotonic()
        publisher.publish(msg)
        if pattern != "stream":
            with lock:
                lock.wait_for(lambda i=index: i in answered_at, PING_TIMEOUT_S)
        next_time = max(next_time + 1 / 30, time.monotonic() if pattern != "stream" else next_time + 1 / 30)
        time.sleep(max(0.0, next_time - time.monotonic()))
    # Late answers still count: wait until the node is idle (a diagnostics report with no input) and no
    # answer came for a while, then take that report's totals.
    quiet_since = time.monotonic()
    while True:
        with lock:
            seen, settled = len(answered_at), counters and float(counters[-1]["input_rate_hz"]) == 0.0
        time.sleep(1.0)
        with lock:
            if len(answered_at) != seen:
                quiet_since = time.monotonic()
            elif settled and time.monotonic() - quiet_since > 3.0:
                break
    with lock:
        latencies = sorted(answered_at[i] - sent_at[i] for i in answered_at if i in sent_at)
        result = {
            "sent": len(sent_at),
            "answered": len(latencies),
            "late": sum(latency > LATE_S for latency in latencies),
            "unanswered": sorted(set(sent_at) - set(answered_at)),
            "latency_p50_ms": 1e3 * latencies[len(latencies) // 2] if latencies else None,
            "latency_max_ms": 1e3 * latencies[-1] if latencies else None,
            "node": counters[-1],
        }
    print("RESULT " + json.dumps(result), flush=True)
    executor.shutdown()
    spinner.join()
    node.destroy_node()
    rclpy.shutdown()


class Diagnostics:
    """This process's view of the node's ``received`` counter."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor

        rclpy.init()
        self.node = rclpy.create_node("bench_transport")
        self.values: dict[str, str] = {}
        self.lock = threading.Lock()
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith("/bench/detector"):
                with self.lock:
                    self.values = {kv.key: kv.value for kv in status.values}

    def received_after(self, after: float) -> int:
        """The ``received`` total of the first report published after ``after`` (monotonic time)."""
        while time.monotonic() < after + 2.5:  # one diagnostics period past ``after``
            time.sleep(0.1)
        with self.lock:
            return int(self.values.get("received", -1))


def dds_env(profile: bool) -> dict[str, str]:
    """This process's environment with ``config/fastdds_large_frames.xml`` loaded or Fast DDS's defaults."""
    env = dict(os.environ)
    env.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)
    return dict(env, FASTRTPS_DEFAULT_PROFILES_FILE=str(PROFILE)) if profile else env


def start_node(model: Path, reliability: str, compressed: bool, env: dict[str, str], log: Path) -> subprocess.Popen:
    """The real ``detector`` node in ``/bench`` on the SSDlite checkpoint, ONNX Runtime, no annotated images."""
    return subprocess.Popen(
        [sys.executable, str(EXECUTABLE), "--ros-args", "--params-file", str(REPO_ROOT / "config/detector.yaml"),
         "-r", "__ns:=/bench", "-p", f"model_path:={model}", "-p", "backend:=onnxruntime",
         "-p", f"image_topic:={TOPIC}", "-p", f"compressed:={str(compressed).lower()}",
         "-p", f"qos_reliability:={reliability}", "-p", "publish_annotated:=false"],
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def run_case(case, model: Path, seconds: float, workdir: Path, diagnostics: Diagnostics) -> tuple[int, int]:
    """(sent, received by the node) for one configuration."""
    name, (width, height), reliability, compressed, profile = case
    # The node keeps the defaults: the camera's side matters.
    node = start_node(model, reliability, compressed, dds_env(False), workdir / f"node_{len(name)}.log")
    camera_env = dds_env(profile)
    try:
        time.sleep(8.0)  # the node imports torch and loads the model
        result = subprocess.run(
            [sys.executable, __file__, "--camera", str(width), str(height), reliability, str(compressed), str(seconds)],
            env=camera_env, capture_output=True, text=True, timeout=seconds + 120,
        )  # fmt: skip
        sent = int(next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("SENT")))
        received = diagnostics.received_after(time.monotonic())
    finally:
        node.terminate()
        node.wait(20)
    return sent, received


def run_loss_case(case, model: Path, frames: int, workdir: Path) -> dict:
    """The probe's RESULT for one ``LOSS_CASES`` row: node and camera started with the same environment."""
    name, reliability, profile, pattern = case
    env = dds_env(profile)
    log = workdir / f"loss_{name.replace(' ', '_').replace(',', '')}.log"
    node = start_node(model, reliability, False, env, log)
    done = threading.Event()
    if pattern == "stall":
        threading.Thread(target=stall, args=(node, done), daemon=True).start()
    try:
        result = subprocess.run(
            [sys.executable, __file__, "--probe", reliability, str(frames), "ping" if pattern == "stall" else pattern],
            env=env, stdout=subprocess.PIPE, text=True,
            timeout=180 + frames * (1 if pattern == "stream" else PING_TIMEOUT_S),
        )  # fmt: skip
        return json.loads(next(line[7:] for line in result.stdout.splitlines() if line.startswith("RESULT ")))
    finally:
        done.set()
        node.send_signal(signal.SIGCONT)
        node.terminate()
        node.wait(20)


def stall(node: subprocess.Popen, done: threading.Event) -> None:
    """Stop the node for ``STALL_S`` every ``STALL_PERIOD_S``: a process starved of CPU on a loaded machine.

    Longer than Fast DDS's shared-memory port health check (``healthy_check_timeout_ms``, 1000 ms by default),
    after which a writer may take the node's port for dead.
    """
    while not done.wait(STALL_PERIOD_S):
        node.send_signal(signal.SIGSTOP)
        done.wait(STALL_S)
        node.send_signal(signal.SIGCONT)


def loss_report(title: str, cases: list, frames: int, model: Path, workdir: Path) -> list[str]:
    """The ``--loss`` or ``--fresh`` section: one row per configuration in ``cases``."""
    lines = [
        title,
        "",
        f"- {os.cpu_count()} cores, {frames} stamped raw VGA rgb8 frames per row, the node (config/detector.yaml: "
        "queue depth 5, reliability as the row) and the camera (depth 5) both with the row's Fast DDS profile.",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M')} UTC; 1-minute load average at the start: {os.getloadavg()[0]:.1f}",
        f"- command: `scripts/run.sh python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`",
        f"- lost on the way = sent - the node's `received`; replaced = the node's `dropped_frames` (newest-only: "
        f"by design); late = answered more than {LATE_S:g} s after it was sent; unanswered = sent - answered.",
        "",
        "| configuration | sent | lost on the way | replaced in the node | answered | late | unanswered "
        "| answer latency p50 / max (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        r = run_loss_case(case, model, frames, workdir)
        received, dropped = int(r["node"]["received"]), int(r["node"]["dropped_frames"])
        unanswered = r["unanswered"]
        shown = f"{len(unanswered)}" + (
            f" (frames {', '.join(map(str, unanswered[:5]))})" if 0 < len(unanswered) <= 5 else ""
        )
        latency = f"{r['latency_p50_ms']:.0f} / {r['latency_max_ms']:.0f}" if r["answered"] else "-"
        lines.append(
            f"| {case[0]} | {r['sent']} | {r['sent'] - received} | {dropped} | {r['answered']} | {r['late']} "
            f"| {shown} | {latency} |"
        )
        print(lines[-1], flush=True)
    return lines


def write_section(lines: list[str], out: Path) -> None:
    """Put the section that starts with ``lines[0]`` into ``out`` in place of its last run, keeping the others."""
    text = out.read_text() if out.exists() else TITLE + "\n\n"
    sections = re.split(r"(?m)^(?=## )", text)
    new = "\n".join(lines)
    at = next((i for i, part in enumerate(sections) if part.startswith(lines[0])), None)
    if at is None:
        sections.append(new)
    else:
        sections[at] = new
    out.write_text("\n\n".join(part.rstrip("\n") for part in sections) + "\n")
    print(new)
    print(f"written to {out}", file=sys.stderr)


def main() -> int:
    args = parse_args()
    if args.camera:
        width, height, reliability, compressed, seconds = args.camera
        camera(int(width), int(height), reliability, compressed == "True", float(seconds))
        return 0
    if args.probe:
        reliability, frames, pattern = args.probe
        probe(reliability, int(frames), pattern)
        return 0
    import torch

    from ssd_ros.vision.checkpoint import save_checkpoint
    from ssd_ros.vision.model import VOC_CLASSES, build_model
    from ssd_ros.vision.model_card import ModelCard

    workdir = Path(tempfile.mkdtemp(prefix="bench_transport_"))
    torch.manual_seed(0)
    card = ModelCard.for_architecture("ssdlite320_mobilenet_v3", VOC_CLASSES, dataset="none (benchmark)")
    model = save_checkpoint(workdir / "lite.pt", build_model("ssdlite320_mobilenet_v3", 21), card)
    if args.loss:
        title = "## Frame counts: lost, late, answered (issue 20)"
        write_section(loss_report(title, LOSS_CASES, args.loss, model, workdir), args.out)
        return 0
    if args.fresh:
        title = "## Frame counts: new publishers, a starved node (issue 20)"
        write_section(loss_report(title, FRESH_CASES, args.fresh, model, workdir), args.out)
        return 0
    diagnostics = Diagnostics()
    lines = [
        "## Delivery of a 30 Hz stream (the node on Fast DDS's defaults)",
        "",
        f"- {os.cpu_count()} cores, ROS_AUTOMATIC_DISCOVERY_RANGE={os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE')}, "
        f"30 Hz for {args.seconds:g} s per row; the node (config/detector.yaml: queue depth 5) subscribes best "
        "effort unless the row says reliable.",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M')}; 1-minute load average at the start: {os.getloadavg()[0]:.1f}",
        f"- command: `scripts/run.sh python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        "| camera stream | sent | received by the node | delivered |",
        "|---|---:|---:|---:|",
    ]
    for case in CASES:
        sent, received = run_case(case, model, args.seconds, workdir, diagnostics)
        lines.append(f"| {case[0]} | {sent} | {received} | {received / max(sent, 1):.0%} |")
        print(lines[-1], flush=True)
    write_section(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
