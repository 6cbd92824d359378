"""CPU of the detector node by lifecycle state, under a 30 Hz camera: an inactive detector must cost < 1 % of a core.

The real ``detector`` executable (SSDlite from a checkpoint this script saves, CPU, reliable input so every
frame reaches an active node) runs while this process publishes 640x480 ``rgb8`` frames at 30 Hz. The node's
CPU time (user + system, ``psutil``) is measured over ``--seconds`` in each state, the camera running all the
while: active (the reference, measured in the same run), inactive (after ``change_state`` deactivate: no
subscription, so DDS sends it nothing) and unconfigured (after cleanup: the model released).

Results: stdout and ``docs/benchmarks/lifecycle.md``.

    scripts/run.sh python benchmarks/bench_lifecycle.py --seconds 10
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from tqdm import tqdm

from ssd_ros.ros.images import rgb_to_image_msg

REPO_ROOT = Path(__file__).resolve().parents[1]
EXECUTABLE = REPO_ROOT / "install" / "ssd_ros" / "lib" / "ssd_ros" / "detector"
NODE = "/bench/detector"
RATE_HZ = 30.0
LIMIT_PERCENT = 1.0  # issue 20: an inactive detector under a 30 Hz camera


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="CPU measurement per state")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks" / "lifecycle.md")
    return parser.parse_args()


class Bench:
    """The camera (30 Hz timer) and the lifecycle client, on one node spun in the background."""

    def __init__(self):
        rclpy.init()
        self.node = rclpy.create_node("bench_lifecycle")
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self._camera = self.node.create_publisher(Image, "/bench/image_raw", qos)
        rng = np.random.default_rng(0)
        self._frame = rgb_to_image_msg(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), Header(frame_id="cam"))
        self.published = 0
        self.node.create_timer(1.0 / RATE_HZ, self._publish)
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()

    def _publish(self) -> None:
        self._frame.header.stamp = self.node.get_clock().now().to_msg()
        self._camera.publish(self._frame)
        self.published += 1

    def call(self, srv_type, service: str, request, timeout_s: float = 300.0):
        """The reply of ``service`` (waited for: the node may still be importing torch)."""
        client = self.node.create_client(srv_type, service)
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                raise SystemExit(f"no {service} within {timeout_s} s")
            future = client.call_async(request)
            deadline = time.monotonic() + timeout_s
            while not future.done():
                if time.monotonic() > deadline:
                    raise SystemExit(f"no reply from {service} within {timeout_s} s")
                time.sleep(0.05)
            return future.result()
        finally:
            self.node.destroy_client(client)

    def change(self, transition: int) -> None:
        """Ask the detector for ``transition``; exit when it fails."""
        request = ChangeState.Request(transition=Transition(id=transition))
        if not self.call(ChangeState, f"{NODE}/change_state", request).success:
            raise SystemExit(f"transition {transition} of {NODE} failed")

    def state(self) -> str:
        """The detector's lifecycle state."""
        return self.call(GetState, f"{NODE}/get_state", GetState.Request()).current_state.label

    def close(self) -> None:
        """Stop spinning and shut rclpy down."""
        self._executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown()


def cpu_seconds(process: psutil.Process) -> float:
    """User + system time of ``process`` and its children (the venv's launcher may run Python as a child)."""
    return sum(sum(p.cpu_times()[:2]) for p in [process, *process.children(recursive=True)])


def cpu_percent(process: psutil.Process, seconds: float, label: str) -> float:
    """The process's CPU time over ``seconds`` of wall time, in percent of one core."""
    start_cpu, start = cpu_seconds(process), time.monotonic()
    for _ in tqdm(range(int(seconds * 10)), desc=label, leave=False):
        time.sleep(0.1)
    return 100.0 * (cpu_seconds(process) - start_cpu) / (time.monotonic() - start)


def main() -> int:
    """Measure, print and write the table; exit code 1 when the inactive node exceeds the limit."""
    args = parse_args()
    sys.path.insert(0, str(REPO_ROOT / "test"))
    from conftest import make_checkpoint  # the suite's checkpoint maker: a real SSDlite, random weights

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = make_checkpoint(Path(folder) / "ssdlite.pt")
        log = open(Path(folder) / "detector.log", "w")  # noqa: SIM115 - closed with the process
        detector = subprocess.Popen(
            [sys.executable, str(EXECUTABLE), "--ros-args", "-r", "__ns:=/bench", "-p", f"model_path:={checkpoint}",
             "-p", "device:=cpu", "-p", "qos_reliability:=reliable", "-p", "publish_annotated:=false"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        bench = Bench()
        try:
            if bench.state() != "active":
                raise SystemExit("the detector did not autostart")
            process = psutil.Process(detector.pid)
            cpu_percent(process, 2.0, "warm-up")  # first inferences, DDS matching
            rows = [("active", cpu_percent(process, args.seconds, "active"))]
            bench.change(Transition.TRANSITION_DEACTIVATE)
            cpu_percent(process, 1.0, "settle")  # the worker's last frame, the reader's removal
            rows.append(("inactive", cpu_percent(process, args.seconds, "inactive")))
            bench.change(Transition.TRANSITION_CLEANUP)
            rows.append(("unconfigured", cpu_percent(process, args.seconds, "unconfigured")))
            published = bench.published
        finally:
            bench.close()
            detector.terminate()
            detector.wait(30)
            log.close()

    cores = psutil.cpu_count()
    active = rows[0][1]
    lines = [
        "# Detector CPU by lifecycle state (benchmarks/bench_lifecycle.py)",
        "",
        f"640x480 rgb8 frames at {RATE_HZ:.0f} Hz (reliable) throughout, {published} published; SSDlite320 "
        f"(random weights) on the CPU; {args.seconds:g} s per state; CPU = user + system time of the node process "
        f"in % of one core ({cores} cores, {time.strftime('%Y-%m-%d')}).",
        "",
        "| state | CPU (% of a core) | vs active |",
        "|---|---:|---:|",
        *[f"| {state} | {percent:.2f} | {percent / active:.3f} |" for state, percent in rows],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    inactive = rows[1][1]
    if inactive >= LIMIT_PERCENT:
        print(f"inactive detector used {inactive:.2f} % of a core, limit {LIMIT_PERCENT} %", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
