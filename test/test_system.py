"""End to end, as rover.launch.py starts it: camera bag -> detector -> follower -> base driver (simulated chip).

The executables the launch file starts run as separate processes with the same parameter files (and
the overrides the launch file applies); a bag made from the Pi car's recorded video (or generated
frames when ../shared/data is absent) is replayed with /clock, like ``ros2 bag play --clock``.
"""

from __future__ import annotations

import math
import sys
import time

import cv2
import numpy as np
import pytest
import rclpy
import torch
from conftest import EXECUTABLES, REPO_ROOT, SHARED_DATA, ros_env, start_executable, stop_process
from geometry_msgs.msg import Twist
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from std_msgs.msg import Float32MultiArray
from vision_msgs.msg import Detection2DArray, LabelInfo

from ssd_ros.base import STATE_FIELDS
from ssd_ros.checkpoint import ModelCard, save_checkpoint
from ssd_ros.tools.bagio import open_bag
from ssd_ros.tools.make_bag import main as make_bag

FRAMES = 40
RATE = 0.25  # bag time runs at a quarter of wall time: CPU inference stays "fresh" in bag time
CONFIG = REPO_ROOT / "config"


def _camera_frames(tmp_path):
    """The recorded lane video, or (no shared data) generated 320x240 frames with a moving blob."""
    video = SHARED_DATA / "picar_camera" / "video" / "lane_drive.avi"
    if video.exists():
        return ["--video", str(video)]
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(FRAMES):
        frame = np.full((240, 320, 3), 90, np.uint8)
        cv2.circle(frame, (60 + 5 * i, 120), 30, (40, 40, 220), -1)
        cv2.imwrite(str(folder / f"{i:04d}.png"), frame)
    return ["--images", str(folder), "--rate-hz", "20"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Runs the whole pipeline once and returns what the test node saw and the processes' logs."""
    tmp_path = tmp_path_factory.mktemp("system")
    bag = tmp_path / "camera_bag"
    assert make_bag([*_camera_frames(tmp_path), "--out", str(bag), "--max-frames", str(FRAMES)]) == 0
    with open_bag(bag) as (reader, _):
        image_stamps = {t for _, t, _ in reader.messages()}

    torch.manual_seed(0)
    # An untrained one-class model: its "person" scores sit near 0.5, so detections flow (this test is
    # about the plumbing, headers and safety, not accuracy; see test_train.py for learning).
    card = ModelCard.for_architecture("ssdlite320_mobilenet_v3", ("person",), dataset="untrained (system test)")
    checkpoint = save_checkpoint(tmp_path / "person.pt", card.build_model(), card)

    sim_time = ["-p", "use_sim_time:=true"]
    processes = {
        "detector": start_executable(
            "detector",
            "--params-file",
            str(CONFIG / "detector.yaml"),
            *sim_time,
            "-p",
            f"model_path:={checkpoint}",
            "-p",
            "image_topic:=camera/image_raw",
            "-p",
            "device:=cpu",
            log_path=tmp_path / "detector.log",
        ),
        "follower": start_executable(
            "follower",
            "--params-file",
            str(CONFIG / "follower.yaml"),
            *sim_time,
            "-p",
            "target_classes:=[person]",
            "-p",
            "min_score:=0.1",
            log_path=tmp_path / "follower.log",
        ),
        "picar_base": start_executable(
            "picar_base",
            "--params-file",
            str(CONFIG / "picar_base.yaml"),
            *sim_time,
            "-p",
            "hardware:=sim",
            log_path=tmp_path / "picar_base.log",
        ),
    }
    seen = {"detections": [], "cmd_vel": [], "state": []}
    rclpy.init()
    node = rclpy.create_node("system_test_observer")
    node.create_subscription(Detection2DArray, "/detections", seen["detections"].append, 50)
    node.create_subscription(Twist, "/cmd_vel", seen["cmd_vel"].append, 200)
    latched = QoSProfile(
        depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL
    )
    node.create_subscription(Float32MultiArray, "/picar_base/state", seen["state"].append, latched)

    def spin_for(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)

    labels = []
    node.create_subscription(LabelInfo, "/label_info", labels.append, latched)

    def ready():
        return labels and node.count_publishers("/cmd_vel") and seen["state"]

    try:
        # The detector latches its class map once the model is loaded and warmed up.
        deadline = time.monotonic() + 180
        while not ready() and time.monotonic() < deadline:
            spin_for(0.2)
        assert ready(), f"pipeline not up: label_info={bool(labels)} state={bool(seen['state'])}"
        spin_for(1.0)
        player = subprocess_player(bag)
        while player.poll() is None:
            spin_for(0.2)
        spin_for(2.0)
        states_before_stop = len(seen["state"])
        codes = {name: stop_process(proc, timeout=15) for name, proc in processes.items()}
        spin_for(1.0)
        final_state = seen["state"][-1] if seen["state"] else None
    finally:
        for proc in processes.values():
            if proc.poll() is None:
                proc.kill()
        node.destroy_node()
        rclpy.shutdown()
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in processes}
    return {
        "seen": seen,
        "image_stamps": image_stamps,
        "codes": codes,
        "processes": processes,
        "logs": logs,
        "player_code": player.returncode,
        "final_state": final_state,
        "states_before_stop": states_before_stop,
    }


def subprocess_player(bag):
    """bag_play --clock at RATE, the way ``ros2 bag play --clock -r`` would run."""
    import subprocess

    return subprocess.Popen(
        [sys.executable, str(EXECUTABLES / "bag_play"), str(bag), "--clock", "--rate", str(RATE)],
        env=ros_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_detections_flow_with_source_image_headers(pipeline):
    detections = pipeline["seen"]["detections"]
    assert pipeline["player_code"] == 0
    assert len(detections) >= 3, (
        f"only {len(detections)} detection messages; detector log:\n{pipeline['logs']['detector']}"
    )
    for msg in detections:
        assert msg.header.frame_id == "camera_link"
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        assert stamp in pipeline["image_stamps"], "detections must carry the source image's stamp"
        for det in msg.detections:
            assert det.header == msg.header
            assert det.results[0].hypothesis.class_id == "person"


def test_follower_commands_flow_and_are_finite(pipeline):
    commands = pipeline["seen"]["cmd_vel"]
    assert commands, f"no cmd_vel; follower log:\n{pipeline['logs']['follower']}"
    assert all(math.isfinite(c.linear.x) and math.isfinite(c.angular.z) for c in commands)
    assert any(c.linear.x != 0.0 or c.angular.z != 0.0 for c in commands), "the follower never moved"


def test_simulated_servo_stays_within_calibrated_limits(pipeline):
    ticks = STATE_FIELDS.index("servo_ticks")
    states = pipeline["seen"]["state"]
    assert states
    values = [state.data[ticks] for state in states]
    assert all(150 <= v <= 450 for v in values), f"servo ticks out of [150, 450]: {min(values)}..{max(values)}"


def test_everything_stops_cleanly(pipeline):
    assert all(code == 0 for code in pipeline["codes"].values()), pipeline["codes"]
    assert all(proc.poll() is not None for proc in pipeline["processes"].values()), "a process was left behind"
    final = dict(zip(STATE_FIELDS, pipeline["final_state"].data))
    assert final["motor_duty"] == 0.0
    assert final["servo_ticks"] == 300  # centre
