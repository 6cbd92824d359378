"""The rover pipeline end to end on this machine, with no hardware and no internet (``make demo``).

Part 1, closed loop over real DDS: ``follower_sim`` (camera + detector + car, simulated) ->
``follower`` -> ``picar_base`` on the simulated PCA9685, each a separate process with the rover's
parameter files. The simulator stands in for the detector, so its boxes are the simulator's own
projections of the scripted people, never a pretend SSD result; the GIF says so on every frame.
Writes ``camera.gif`` (what the follower saw, its target marked from ``follow_target`` / ``follow_state``),
``trajectory.png`` and a summary.

Part 2, only with ``--checkpoint`` (trained weights; none ship with the repository): a camera bag
made from rover footage (by default the labelled rover frames in ../shared/data, which show the
classes a rover model knows; or ``--images`` / ``--video``) is run through ``bag_eval`` (the node's
decoder and Detector, the follower's control law); the detection count is printed and the annotated
frames are written to ``detections.mp4``. The checkpoint and footage are checked before part 1.

Exit status: 0 done, 1 a run failed (a node, make_bag or bag_eval), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ssd_ros.cli import add_inference_arguments, inference_kwargs
from ssd_ros.control.geometry import PERSON_HEIGHT_M

REPO_ROOT = Path(__file__).resolve().parents[2]
# Labelled rover frames with the rover model's classes (the lane video in ../shared shows none of them).
DEFAULT_IMAGES = REPO_ROOT.parent / "shared" / "data" / "picar_camera" / "detection" / "test"


def _ros_env() -> dict[str, str]:
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    env.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))
    return env


def _executable(name: str) -> str:
    path = REPO_ROOT / "install" / "ssd_ros" / "lib" / "ssd_ros" / name
    if not path.exists():
        raise SystemExit(f"demo: {path} is missing; run `make setup` first")
    return str(path)


def _start(name: str, params_file: str, overrides: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # The rover's geometry first, then the node's own file, as rover.launch.py loads them: the demo drives the
    # calibrated rover, not the nodes' built-in defaults.
    config = REPO_ROOT / "config"
    args = [sys.executable, _executable(name), "--ros-args"]
    args += ["--params-file", str(config / "rover.yaml"), "--params-file", str(config / params_file)]
    for override in overrides:
        args += ["-p", override]
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _yaw(orientation) -> float:
    return 2.0 * math.atan2(orientation.z, orientation.w)


def record_closed_loop(scenario: str, duration_s: float, out: Path) -> dict:
    """Run sim + follower + base as processes for ``duration_s`` simulated seconds and record the topics."""
    import rclpy
    from geometry_msgs.msg import PoseArray, PoseStamped, Twist
    from std_msgs.msg import Float32MultiArray, String
    from vision_msgs.msg import Detection2D, Detection2DArray

    from ssd_ros.ros.messages import LATCHED_QOS, stamp_ns
    from ssd_ros.vision.drawing import FollowMark

    env = _ros_env()
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID")})
    sim_time = "use_sim_time:=true"
    processes = [
        _start(
            "follower_sim",
            "follower_sim.yaml",
            [f"scenario:={scenario}", "publish_clock:=true", "paused:=true"],
            env,
            out / "follower_sim.log",
        ),
        _start("follower", "follower.yaml", [sim_time], env, out / "follower.log"),
        _start("picar_base", "picar_base.yaml", [sim_time, "hardware:=sim"], env, out / "picar_base.log"),
    ]
    rec = {"rover": [], "targets": [], "detections": [], "cmd_vel": [], "state": [], "follow": {}}
    follow_state = ["inactive"]  # the follower's, latched; each follow_target is paired with the one before it
    rclpy.init()
    node = rclpy.create_node("demo_recorder")

    def on_rover(msg):
        stamp = stamp_ns(msg.header) / 1e9
        rec["rover"].append((stamp, msg.pose.position.x, msg.pose.position.y, _yaw(msg.pose.orientation)))

    node.create_subscription(PoseStamped, "/sim/rover_pose", on_rover, 50)
    node.create_subscription(
        PoseArray,
        "/sim/target_poses",
        lambda m: rec["targets"].append([(p.position.x, p.position.y) for p in m.poses]),
        50,
    )
    node.create_subscription(Detection2DArray, "/detections", lambda m: rec["detections"].append(m), 50)
    node.create_subscription(String, "/follow_state", lambda m: follow_state.__setitem__(0, m.data), LATCHED_QOS)
    node.create_subscription(
        Detection2D,
        "/follow_target",
        lambda m: rec["follow"].__setitem__(stamp_ns(m.header), FollowMark(follow_state[0], m.id)),
        50,
    )
    node.create_subscription(Twist, "/cmd_vel", lambda m: rec["cmd_vel"].append((m.linear.x, m.angular.z)), 100)
    node.create_subscription(
        Float32MultiArray, "/picar_base/state", lambda m: rec["state"].append(list(m.data)), LATCHED_QOS
    )
    try:
        _start_when_connected(node, processes)
        wall_deadline = time.monotonic() + 60 + 4 * duration_s
        while time.monotonic() < wall_deadline and (not rec["rover"] or rec["rover"][-1][0] < duration_s):
            rclpy.spin_once(node, timeout_sec=0.05)
    finally:
        for proc in processes:
            proc.send_signal(2)
        for proc in processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
        node.destroy_node()
        rclpy.shutdown()
    rec["exit_codes"] = [proc.returncode for proc in processes]
    return rec


def _start_when_connected(node, processes, timeout_s: float = 60.0) -> None:
    """Unpause the simulator once every node sees the others, so each run records the same closed loop."""
    import rclpy
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    def connected() -> bool:  # detections: follower + recorder; cmd_vel: base + recorder; its publisher
        return (
            node.count_subscribers("/detections") >= 2
            and node.count_subscribers("/cmd_vel") >= 2
            and node.count_publishers("/cmd_vel") >= 1
        )

    deadline = time.monotonic() + timeout_s
    while not connected():
        if time.monotonic() > deadline or any(proc.poll() is not None for proc in processes):
            raise SystemExit("demo: the nodes did not come up; see the logs in the output folder")
        rclpy.spin_once(node, timeout_sec=0.1)
    client = node.create_client(SetParameters, "/follower_sim/set_parameters")
    if not client.wait_for_service(timeout_sec=timeout_s):
        raise SystemExit("demo: follower_sim offers no parameter service")
    request = SetParameters.Request(parameters=[Parameter("paused", value=False).to_parameter_msg()])
    future = client.call_async(request)
    rclpy.spin_until_future_complete(node, future, timeout_sec=timeout_s)
    if future.result() is None or not future.result().results[0].successful:
        raise SystemExit("demo: could not start the simulation (paused:=false refused)")
    node.destroy_client(client)


def write_camera_gif(detections, path: Path, every: int = 3, follow=None) -> int:
    """A GIF of the follower's view: the simulator's boxes on a blank 640x480 frame, labelled as simulated.

    ``follow`` maps a frame's stamp (ns) to the :class:`~ssd_ros.vision.drawing.FollowMark` the follower published
    for it; a frame it did not decide on shows the previous one.
    """
    import cv2
    from PIL import Image

    from ssd_ros.ros.messages import msg_to_detections, stamp_ns
    from ssd_ros.vision.drawing import draw_detections

    frames, mark = [], None
    for k, msg in enumerate(detections):
        mark = (follow or {}).get(stamp_ns(msg.header), mark)
        if k % every:
            continue
        canvas = np.full((480, 640, 3), 60, np.uint8)
        canvas = draw_detections(canvas, msg_to_detections(msg), follow=mark)
        stamp = stamp_ns(msg.header) / 1e9
        cv2.putText(
            canvas,
            f"SIMULATED detections (no trained weights)  t={stamp:5.1f}s",
            (10, 470),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.55,
            (255, 255, 0),
            1,
            cv2.LINE_AA,
        )
        frames.append(Image.fromarray(cv2.resize(canvas, (320, 240), interpolation=cv2.INTER_AREA)))
    if frames:
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=150, loop=0)
    return len(frames)


def seen_from_camera(rover: tuple[float, float, float], target: tuple[float, float]) -> tuple[float, float]:
    """Bearing (deg) and ground distance (m) of ``target`` from the camera, where "desired" is measured from.

    Measured from the rover's reference point (the rear axle) the rover would look camera_forward_m short.
    """
    from ssd_ros.simulation.simulator import RoverState, SimParams, bearing_and_distance

    x, y, yaw = rover
    bearing, distance = bearing_and_distance(RoverState(x=x, y=y, yaw=yaw), target, SimParams())
    return math.degrees(bearing), distance


def plot_trajectory(rec: dict, desired_m: float, path: Path) -> list[str]:
    """Top-down rover and target paths, and camera distance/bearing to the followed person over time.

    A person who does not move is drawn as a marker, not a path of zero length. Returns the labels
    of the top-down view's legend.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rover = np.asarray(rec["rover"])
    targets = np.asarray(rec["targets"][: len(rover)])
    fig, (top, errors) = plt.subplots(1, 2, figsize=(11, 4.5))
    top.plot(rover[:, 1], rover[:, 2], "b-", label="rover (rear axle)")
    for k in range(targets.shape[1]):
        xs, ys = targets[:, k, 0], targets[:, k, 1]
        if np.ptp(xs) < 0.01 and np.ptp(ys) < 0.01:  # standing still: a 1 cm path would be invisible
            top.plot(xs[0], ys[0], "*", markersize=14, label=f"person {k} (standing)")
        else:
            top.plot(xs, ys, "--", label=f"person {k}")
    top.set_aspect("equal", adjustable="datalim")
    top.set(xlabel="x (m)", ylabel="y (m)", title="closed loop over DDS: sim -> follower -> picar_base")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    n = min(len(rover), len(targets))
    seen = [seen_from_camera(tuple(pose[1:]), tuple(people[0])) for pose, people in zip(rover[:n], targets[:n])]
    bearing_deg, distance_m = np.asarray(seen).reshape(-1, 2).T
    errors.plot(rover[:n, 0], distance_m, "g-", label="camera to person 0 (m)")
    errors.axhline(desired_m, color="g", ls=":", label=f"desired {desired_m:.2f} m (from the camera)")
    errors.plot(rover[:n, 0], bearing_deg / 10, "m-", label="bearing (deg / 10)")
    errors.set(xlabel="simulated time (s)")
    errors.legend(fontsize=8)
    errors.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return [text.get_text() for text in top.get_legend().get_texts()]


def run_detector_on_footage(
    checkpoint: Path, footage: Path, out: Path, max_frames: int, inference: list[str]
) -> tuple[Path, dict]:
    """make_bag + bag_eval on ``footage`` (a video file or an image folder) with ``checkpoint`` (or an export).

    ``inference`` holds bag_eval's ``--backend``, ``--precision`` and ``--threads`` options.

    Returns the MP4 of the annotated frames and bag_eval's report (``detections``, ``frames``, ...).
    """
    import json

    import cv2

    from ssd_ros.ros.images import image_msg_to_rgb
    from ssd_ros.tools.bag_eval import ANNOTATED_TOPIC
    from ssd_ros.tools.bag_eval import main as bag_eval
    from ssd_ros.tools.bagio import deserialize, open_bag
    from ssd_ros.tools.make_bag import main as make_bag

    bag, evaluated, report = out / "camera_bag", out / "camera_bag_eval", out / "bag_eval_report.json"
    for previous in (bag, evaluated):  # the demo's own output of an earlier run (bags are never overwritten)
        shutil.rmtree(previous, ignore_errors=True)
    source = ["--images" if footage.is_dir() else "--video", str(footage)]
    if make_bag([*source, "--out", str(bag), "--max-frames", str(max_frames)]) != 0:
        raise SystemExit("demo: make_bag failed")
    evaluation = [
        str(bag),
        "--checkpoint",
        str(checkpoint),
        *inference,
        "--out",
        str(evaluated),
        "--report",
        str(report),
    ]
    if bag_eval(evaluation) != 0:
        raise SystemExit("demo: bag_eval failed")

    video_path, writer = out / "detections.mp4", None
    with open_bag(evaluated) as (reader, _):
        connections = [c for c in reader.connections if c.topic == ANNOTATED_TOPIC]
        for connection, _, raw in reader.messages(connections=connections):
            rgb = image_msg_to_rgb(deserialize(raw, connection.msgtype))
            if writer is None:  # 2 frames/s: a few stills stay readable; a video plays at 10
                fps = 2 if footage.is_dir() else 10
                writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, rgb.shape[1::-1])
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if writer is not None:
        writer.release()
    return video_path, json.loads(report.read_text())


def check_part2(checkpoint: Path, footage: Path, inference: dict) -> str | None:
    """Why part 2 cannot run (model, backend or footage), or None; checked before the minute-long part 1."""
    from ssd_ros.vision.checkpoint import CheckpointError
    from ssd_ros.vision.detector import Detector

    if not footage.exists():
        return f"footage {footage} not found (give --images DIR or --video FILE)"
    try:
        Detector.from_checkpoint(checkpoint, device="cpu", **inference)  # what bag_eval will load
    except (CheckpointError, ValueError) as exc:
        return f"--checkpoint: {exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m ssd_ros.tools.demo``)."""
    from ssd_ros.simulation.simulator import SCENARIOS

    parser = argparse.ArgumentParser(
        prog="demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "out" / "demo", help="output folder")
    parser.add_argument(
        "--scenario", default="static", choices=SCENARIOS, help="follower_sim scenario (default: static)"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="simulated seconds (default 20)")
    parser.add_argument(
        "--checkpoint", type=Path, help="trained SSD checkpoint (.pt) or export (.onnx, .xml) for part 2 (optional)"
    )
    add_inference_arguments(parser)
    footage = parser.add_mutually_exclusive_group()
    footage.add_argument("--images", type=Path, help=f"image folder for part 2 (default: {DEFAULT_IMAGES})")
    footage.add_argument("--video", type=Path, help="video for part 2 instead of the image folder")
    parser.add_argument("--max-frames", type=int, default=60, help="frames of the footage for part 2")
    args = parser.parse_args(argv)
    footage = args.video or args.images or DEFAULT_IMAGES
    if args.checkpoint is not None:
        problem = check_part2(args.checkpoint, footage, inference_kwargs(args))
        if problem:
            print(f"demo: error: {problem}", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)

    from ssd_ros.control.follow import FollowParams
    from ssd_ros.ros.picar_base_node import STATE_FIELDS
    from ssd_ros.simulation.simulator import SimParams, desired_distance_m

    print(f"demo: closed loop '{args.scenario}' for {args.duration:g} simulated s (sim + follower + picar_base)...")
    rec = record_closed_loop(args.scenario, args.duration, args.out)
    if not rec["rover"] or not rec["detections"]:
        print(f"demo: the closed loop produced no data; see the logs in {args.out}", file=sys.stderr)
        return 1
    desired = desired_distance_m(PERSON_HEIGHT_M, FollowParams.desired_height_fraction, SimParams())
    plot_trajectory(rec, desired, args.out / "trajectory.png")
    gif_frames = write_camera_gif(rec["detections"], args.out / "camera.gif", follow=rec["follow"])
    ticks = [s[STATE_FIELDS.index("servo_ticks")] for s in rec["state"]]
    final = dict(zip(STATE_FIELDS, rec["state"][-1])) if rec["state"] else {}
    t, x, y, yaw = rec["rover"][-1]
    tx, ty = rec["targets"][-1][0]
    lines = ["## ssd_ros demo summary"]
    lines.append(
        f"- simulated time {t:.1f} s, {len(rec['detections'])} detection messages (SIMULATED: the simulator's "
        f"projected boxes, not an SSD), {len(rec['cmd_vel'])} cmd_vel"
    )
    bearing_deg, distance_m = seen_from_camera((x, y, yaw), (tx, ty))
    lines.append(
        f"- final distance from the camera to the person {distance_m:.2f} m (desired {desired:.2f} m), "
        f"bearing {bearing_deg:+.1f} deg"
    )
    if ticks:
        lines.append(
            f"- steering servo ticks {min(ticks):.0f}..{max(ticks):.0f} (limits 150..450); after stop: "
            f"motor duty {final.get('motor_duty')}, servo {final.get('servo_ticks'):.0f} ticks"
        )
    lines.append(f"- process exit codes {rec['exit_codes']}")
    lines.append(f"- wrote {args.out / 'trajectory.png'} and {args.out / 'camera.gif'} ({gif_frames} frames)")
    if args.checkpoint is None:
        lines.append(
            "- no trained detector weights were given (--checkpoint), and none ship with the repository: "
            "the SSD part of the pipeline was not run on camera footage. Train one with training/train.py."
        )
    else:
        inference = ["--backend", args.backend, "--precision", args.precision, "--threads", str(args.threads)]
        video, report = run_detector_on_footage(args.checkpoint, footage, args.out, args.max_frames, inference)
        found = {name: count for name, count in report["detections_per_class"].items() if count}
        lines.append(
            f"- SSD on {footage}: {report['detections']} detections in {report['frames']} frames "
            f"(score > {report['score_threshold']:g}; {found or 'none'}); annotated frames in {video}"
        )
    summary = "\n".join(lines) + "\n"
    (args.out / "summary.md").write_text(summary)
    print("\n" + summary, end="")
    if any(code != 0 for code in rec["exit_codes"]):
        print(f"demo: a node did not stop cleanly; see the logs in {args.out}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
