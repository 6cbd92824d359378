"""``make demo``: the closed loop over DDS (sim -> follower -> base on the simulated chip), end to end,
then the SSD on rover footage; wrong arguments fail at once."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import REPO_ROOT, make_checkpoint, ros_env
from PIL import Image, ImageSequence

from ssd_ros.simulation.simulator import SCENARIOS
from ssd_ros.tools import demo
from ssd_ros.vision.drawing import FOLLOW_COLORS

MODEL_CLASSES = ("Person", "Stop Sign")  # a randomly initialised SSDlite with some of the rover's classes


def _footage(folder):
    """The rover frames when ../shared is here (the demo's default), else three frames of our own."""
    if demo.DEFAULT_IMAGES.is_dir():
        return demo.DEFAULT_IMAGES
    folder.mkdir()
    for k in range(3):
        cv2.imwrite(str(folder / f"{k}.jpg"), np.full((480, 640, 3), 40 * k, np.uint8))
    return folder


def test_demo_runs_the_closed_loop_and_the_ssd_and_stops_every_node_cleanly(tmp_path):
    out, footage = tmp_path / "out", _footage(tmp_path / "frames")
    command = [sys.executable, "-m", "ssd_ros.tools.demo", "--out", str(out), "--duration", "6"]
    command += ["--checkpoint", str(make_checkpoint(tmp_path / "model.pt", MODEL_CLASSES)), "--images", str(footage)]
    command += ["--max-frames", "3"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=ros_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert "process exit codes [0, 0, 0]" in summary and summary in result.stdout
    assert "after stop: motor duty 0.0, servo 300 ticks" in summary  # the base ended stopped and centred
    assert "final distance from the camera to the person" in summary
    assert (out / "trajectory.png").stat().st_size > 0 and (out / "camera.gif").stat().st_size > 0
    for log in ("follower_sim", "follower", "picar_base"):
        assert "Traceback" not in (out / f"{log}.log").read_text(), log
    # The GIF shows whom the follower follows (its follow_target and follow_state): the banner in the corner is
    # the following colour in most frames (the palette of a GIF shifts colours a little).
    with Image.open(out / "camera.gif") as gif:
        corners = [np.asarray(frame.convert("RGB"))[1, 1].astype(int) for frame in ImageSequence.Iterator(gif)]
    following = sum(np.abs(corner - FOLLOW_COLORS["following"]).max() < 40 for corner in corners)
    assert following > len(corners) / 2, corners
    # Part 2: the count printed is bag_eval's own count on the footage.
    report = json.loads((out / "bag_eval_report.json").read_text())
    assert report["frames"] == 3
    assert f"SSD on {footage}: {report['detections']} detections in 3 frames" in summary
    assert (out / "detections.mp4").stat().st_size > 0


def test_mistyped_scenario_fails_at_once_listing_the_scenarios(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--scenario", "cirle", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'cirle'" in error and all(name in error for name in SCENARIOS)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["missing", "not-a-checkpoint", "folder"])
def test_bad_checkpoint_fails_before_the_closed_loop(tmp_path, capsys, kind):
    checkpoint = {"missing": tmp_path / "none.pt", "not-a-checkpoint": tmp_path / "notes.pt", "folder": tmp_path}[kind]
    if kind == "not-a-checkpoint":
        checkpoint.write_text("notes")
    assert demo.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]) == 2
    assert f"demo: error: --checkpoint: checkpoint {checkpoint}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was started


def test_an_export_is_checked_with_the_backend_it_will_run_on(tmp_path, capsys):
    """make demo CHECKPOINT=x.onnx: an export runs (backend auto); one its backend cannot run is refused first."""
    from ssd_ros.tools import export_model

    onnx = tmp_path / "model.onnx"
    checkpoint = make_checkpoint(tmp_path / "model.pt", MODEL_CLASSES)
    assert export_model.main(["--checkpoint", str(checkpoint), "--out", str(onnx), "--quiet"]) == 0
    images = tmp_path / "frames"
    images.mkdir()
    assert demo.check_part2(onnx, images, {"backend": "auto", "precision": "auto", "num_threads": 1}) is None
    assert demo.main(["--checkpoint", str(onnx), "--backend", "torch", "--out", str(tmp_path / "out")]) == 2
    [error] = capsys.readouterr().err.splitlines()
    assert error.startswith(f"demo: error: --checkpoint: {onnx}") and "backend" in error, error
    assert not (tmp_path / "out").exists()


def test_missing_footage_fails_before_the_closed_loop(tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "model.pt", MODEL_CLASSES)
    argv = ["--checkpoint", str(checkpoint), "--video", str(tmp_path / "drive.mp4"), "--out", str(tmp_path / "out")]
    assert demo.main(argv) == 2
    assert f"footage {tmp_path / 'drive.mp4'} not found" in capsys.readouterr().err


def test_make_demo_passes_every_option_through():
    command = ["make", "-n", "demo", "OUT=o", "SCENARIO=circle", "CHECKPOINT=c.onnx", "BACKEND=openvino"]
    command += ["IMAGES=frames", "VIDEO=v.mp4"]
    printed = " ".join(
        subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, check=True).stdout.split()
    )
    options = ("--out o", "--scenario circle", "--checkpoint c.onnx", "--backend openvino", "--images frames")
    for option in (*options, "--video v.mp4"):
        assert option in printed, printed


def test_trajectory_plot_marks_a_standing_person(tmp_path):
    rover = [(0.1 * k, 0.05 * k, 0.0, 0.0) for k in range(20)]
    targets = [[(3.0, 1.0), (1.0 + 0.1 * k, -1.0)] for k in range(20)]  # person 0 stands, person 1 walks
    labels = demo.plot_trajectory({"rover": rover, "targets": targets}, 1.5, tmp_path / "t.png")
    assert labels == ["rover (rear axle)", "person 0 (standing)", "person 1"]


def test_distance_is_measured_from_the_camera_like_the_desired_distance():
    from ssd_ros.simulation.simulator import SimParams

    ahead = SimParams().camera_forward_m
    bearing, distance = demo.seen_from_camera((0.0, 0.0, 0.0), (2.0 + ahead, 0.0))
    assert distance == pytest.approx(2.0) and bearing == pytest.approx(0.0)
