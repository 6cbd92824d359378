"""Camera -> detector node delivery over DDS on one machine: how many frames of a 30 Hz camera reach the node.

For each configuration a camera-like publisher process sends frames at 30 Hz for ``--seconds`` to the real
``detector`` node (SSDlite, ONNX Runtime: fast enough that the node's own receive path is not the limit),
and the node's ``received`` counter (``/diagnostics``) says how many arrived:

* raw 640x480 and 1280x720 ``rgb8`` frames, best effort (as cameras publish) into the node's default
  best-effort subscription, with Fast DDS's default transports and with ``config/fastdds_large_frames.xml``
  in the camera process (what ``scripts/env.sh`` and ``rover.launch.py`` set);
* the alternatives for a Pi + laptop split: reliable raw frames (``qos_reliability:=reliable``) and JPEG
  ``CompressedImage`` (``compressed:=true``).

Results: stdout and ``docs/benchmarks/transport.md``.

    scripts/run.sh python benchmarks/bench_transport.py --seconds 20
"""

from __future__ import annotations

import argparse
import os
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
# name, (width, height), camera reliability, compressed, camera process uses PROFILE
CASES = [
    ("raw VGA, best effort, Fast DDS defaults", (640, 480), "best_effort", False, False),
    ("raw VGA, best effort, fastdds_large_frames.xml", (640, 480), "best_effort", False, True),
    ("raw 1280x720, best effort, Fast DDS defaults", (1280, 720), "best_effort", False, False),
    ("raw 1280x720, best effort, fastdds_large_frames.xml", (1280, 720), "best_effort", False, True),
    ("raw VGA, reliable, Fast DDS defaults", (640, 480), "reliable", False, False),
    ("JPEG VGA, best effort, Fast DDS defaults", (640, 480), "best_effort", True, False),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each 30 Hz stream")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks" / "transport.md")
    parser.add_argument("--camera", nargs=5, metavar=("W", "H", "RELIABILITY", "COMPRESSED", "SECONDS"),
                        help=argparse.SUPPRESS)  # fmt: skip
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


def run_case(case, model: Path, seconds: float, workdir: Path, diagnostics: Diagnostics) -> tuple[int, int]:
    """(sent, received by the node) for one configuration."""
    name, (width, height), reliability, compressed, profile = case
    env = dict(os.environ)
    env.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)  # the node keeps the defaults: the camera's side matters
    node = subprocess.Popen(
        [sys.executable, str(EXECUTABLE), "--ros-args", "--params-file", str(REPO_ROOT / "config/detector.yaml"),
         "-r", "__ns:=/bench", "-p", f"model_path:={model}", "-p", "backend:=onnxruntime",
         "-p", f"image_topic:={TOPIC}", "-p", f"compressed:={str(compressed).lower()}",
         "-p", f"qos_reliability:={reliability}", "-p", "publish_annotated:=false"],
        env=env, stdout=open(workdir / f"node_{len(name)}.log", "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    camera_env = dict(env, **({"FASTRTPS_DEFAULT_PROFILES_FILE": str(PROFILE)} if profile else {}))
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


def main() -> int:
    args = parse_args()
    if args.camera:
        width, height, reliability, compressed, seconds = args.camera
        camera(int(width), int(height), reliability, compressed == "True", float(seconds))
        return 0
    import torch
    from bench_detector import write_report

    from ssd_ros.vision.checkpoint import save_checkpoint
    from ssd_ros.vision.model import VOC_CLASSES, build_model
    from ssd_ros.vision.model_card import ModelCard

    workdir = Path(tempfile.mkdtemp(prefix="bench_transport_"))
    torch.manual_seed(0)
    card = ModelCard.for_architecture("ssdlite320_mobilenet_v3", VOC_CLASSES, dataset="none (benchmark)")
    model = save_checkpoint(workdir / "lite.pt", build_model("ssdlite320_mobilenet_v3", 21), card)
    diagnostics = Diagnostics()
    lines = [
        "# Camera -> detector delivery over DDS (one machine)",
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
    lines.append("")
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
