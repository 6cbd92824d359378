"""bag_eval end to end: camera bags in both storage formats, raw and JPEG, evaluated with a real checkpoint.

The output bags are read back with rosbags and deserialised with rclpy into the real message classes.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ament_index_python.packages import get_package_share_directory
from conftest import make_checkpoint, shared_data
from geometry_msgs.msg import Twist, TwistStamped
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from tool_interrupt import interrupt_after
from vision_msgs.msg import Detection2DArray

from ssd_ros.control.camera import PinholeCamera
from ssd_ros.control.follow import FollowController, FollowParams
from ssd_ros.control.tracking import Tracker, TrackerParams
from ssd_ros.evaluation.voc import parse_annotation
from ssd_ros.evaluation.voc_metric import evaluate_detections
from ssd_ros.ros.images import compressed_msg_to_rgb, image_msg_to_rgb, rgb_to_image_msg
from ssd_ros.ros.messages import camera_info_msg, msg_to_detections
from ssd_ros.settings import settings_from_mapping
from ssd_ros.tools import bag_eval, bagio, export_model, make_bag
from ssd_ros.tools.bagio import add_topic, open_writer, serialize
from ssd_ros.vision.detector import Detector
from ssd_ros.vision.drawing import FOLLOW_COLORS, TARGET_STATES
from ssd_ros.vision.image_codec import read_image_file

# The test checkpoint's own class order (not the sorted order of conftest.PICAR_CLASSES).
MODEL_CLASSES = ("Person", "Stop Sign", "Red Traffic Light", "Speed Limit 25", "Green Traffic Light", "Speed Limit 40")
FRAMES = 8
START_S = 1_700_000_000.0
# An untrained model's scores are about 1 / (classes + 1): a low threshold gives detections to check.
DETECTOR_ARGS = ["--score-threshold", "0.1", "--max-detections", "5", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a small shared CI machine, OpenMP threads spinning against each other make
    each frame an order of magnitude slower (measured: 36 ms vs 670 ms CPU per frame on 2 busy cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("model") / "picar_lite.pt", MODEL_CLASSES, dataset="test")


@pytest.fixture(scope="module")
def camera_bags(tmp_path_factory):
    """lane_drive.avi as raw and JPEG bags in both storage formats."""
    video = shared_data("picar_camera", "video", "lane_drive.avi")
    root = tmp_path_factory.mktemp("bags")
    bags = {}
    for storage in ("mcap", "sqlite3"):
        for kind in ("raw", "jpeg"):
            out = root / f"{kind}_{storage}"
            argv = ["--video", str(video), "--out", str(out), "--storage", storage, "--max-frames", str(FRAMES)]
            argv += ["--start-time-s", str(START_S)] + (["--compressed"] if kind == "jpeg" else [])
            assert make_bag.main(argv) == 0
            bags[kind, storage] = out
    return bags


def read_bag(path):
    with Reader(path) as reader:
        connections = {c.topic: c for c in reader.connections}
        messages = {}
        for connection, bag_ns, raw in reader.messages():
            messages.setdefault(connection.topic, []).append((bag_ns, bytes(raw)))
    return connections, messages


def run_eval(argv, capsys):
    status = bag_eval.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("kind", ["raw", "jpeg"])
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_output_bag_reads_back_with_rclpy(tmp_path, camera_bags, checkpoint, kind, storage, capsys):
    source = camera_bags[kind, storage]
    out = tmp_path / "eval"
    argv = [source, "--checkpoint", checkpoint, "--out", out, "--storage", storage, *DETECTOR_ARGS]
    # The follower follows track ids only: the random model's scores (>= 0.1) must start tracks.
    argv += [
        "--follow-classes",
        *MODEL_CLASSES,
        "--follow-param",
        "min_score=0.0",
        "--track-param",
        "track_high_score=0.1",
    ]
    status, stdout, _ = run_eval(argv, capsys)
    assert status == 0

    image_topic = "/camera/image_raw/compressed" if kind == "jpeg" else "/camera/image_raw"
    connections, messages = read_bag(out)
    assert set(connections) == {image_topic, "/detections", "/image_annotated", "/cmd_vel"}
    _, source_messages = read_bag(source)
    # The original images are copied byte for byte, at their bag times.
    assert messages[image_topic] == source_messages[image_topic]

    # The output's vision_msgs type hash is the installed package's: a ROS 2 install can play it.
    share = Path(get_package_share_directory("vision_msgs"))
    hashes = json.loads((share / "msg" / "Detection2DArray.json").read_text())["type_hashes"]
    assert connections["/detections"].digest == hashes[0]["hash_string"]

    image_class = CompressedImage if kind == "jpeg" else Image
    decode = compressed_msg_to_rgb if kind == "jpeg" else image_msg_to_rgb
    detector = Detector.from_checkpoint(checkpoint, score_threshold=0.1, max_detections=5, device="cpu")
    detections = messages["/detections"]
    assert len(detections) == len(messages["/image_annotated"]) == FRAMES
    total, pictures = 0, []
    for (image_ns, image_raw), (det_ns, det_raw), (ann_ns, ann_raw) in zip(
        messages[image_topic], detections, messages["/image_annotated"]
    ):
        image = deserialize_message(image_raw, image_class)
        array = deserialize_message(det_raw, Detection2DArray)
        annotated = deserialize_message(ann_raw, Image)
        assert det_ns == ann_ns == image_ns
        assert array.header == image.header and annotated.header == image.header
        for det in array.detections:
            assert det.header == image.header
            assert det.results[0].hypothesis.class_id in MODEL_CLASSES
        # The same decoding and Detector as the live node, frame by frame.
        rgb = decode(image)
        expected = detector(rgb)
        got = msg_to_detections(array)
        assert got.names == expected.names
        np.testing.assert_allclose(got.boxes, expected.boxes, atol=1e-3)
        np.testing.assert_allclose(got.scores, expected.scores, atol=1e-6)
        total += len(got)
        assert (annotated.encoding, annotated.height, annotated.width) == ("rgb8", rgb.shape[0], rgb.shape[1])
        pictures.append(np.frombuffer(annotated.data, np.uint8).reshape(rgb.shape))
    assert total > 0, "the test model should detect something at this threshold"

    # The follower ticks at 20 Hz on bag time from the first to the last frame; the video is 20 fps, so
    # tick k gets frame k's detections. Replaying them through a FollowController gives the same commands
    # (to float32 precision: the boxes went through the message's centre/size form).
    commands = messages["/cmd_vel"]
    assert [t for t, _ in commands] == [t for t, _ in messages[image_topic]]
    params = {"image_width": 320, "image_height": 240, "target_classes": list(MODEL_CLASSES), "min_score": 0.0}
    controller = FollowController(settings_from_mapping(FollowParams, params))
    moving, marked = 0, 0
    for (tick_ns, cmd_raw), (_, det_raw), drawn in zip(commands, detections, pictures, strict=True):
        array = deserialize_message(det_raw, Detection2DArray)
        stamp_s = array.header.stamp.sec + array.header.stamp.nanosec * 1e-9
        expected = controller.update(msg_to_detections(array), stamp_s, tick_ns / 1e9)
        # The frame's picture shows what the follower decided on it: its state, and the target's box marked.
        assert tuple(drawn[1, 1]) == FOLLOW_COLORS[controller.status]
        for det in array.detections:
            if controller.status in TARGET_STATES and det.id == controller.target.track_id:
                x, y = round(det.bbox.center.position.x - det.bbox.size_x / 2), round(det.bbox.center.position.y)
                assert tuple(drawn[y, max(x, 0)]) == FOLLOW_COLORS[controller.status], det.id
                marked += 1
        twist = deserialize_message(cmd_raw, Twist)
        assert math.isfinite(twist.linear.x) and math.isfinite(twist.angular.z)
        assert twist.linear.x == pytest.approx(expected.linear_mps, rel=1e-5, abs=1e-9)
        assert twist.angular.z == pytest.approx(expected.angular_radps, rel=1e-5, abs=1e-9)
        assert twist.linear.y == twist.linear.z == twist.angular.x == twist.angular.y == 0.0
        moving += twist.linear.x != 0.0
    assert moving > 0, "following every class at min_score 0, the rover should have moved"
    assert marked > 0, "the followed box should have been marked"

    report = json.loads((out / "bag_eval_report.json").read_text())
    assert report["frames"] == report["processed_frames"] == FRAMES and report["bad_frames"] == 0
    assert report["detections"] == total == sum(report["detections_per_class"].values())
    assert report["cmd_vel"]["messages"] == len(commands)
    assert report["model_latency_ms"]["p50"] > 0 and report["frames_per_s"] > 0
    assert report["fault"] is None
    assert f"frames: {FRAMES} ({FRAMES} processed, 0 bad)" in stdout


def test_batched_run_and_the_follower_config_file(tmp_path, camera_bags, checkpoint, capsys):
    source = camera_bags["raw", "mcap"]
    single, batched = tmp_path / "single", tmp_path / "batched"
    assert run_eval([source, "--checkpoint", checkpoint, "--out", single, *DETECTOR_ARGS], capsys)[0] == 0
    config = tmp_path / "follower.yaml"
    config.write_text(
        "/**:\n  ros__parameters:\n    rate_hz: 10.0\n    twist_stamped: true\n    cmd_frame_id: chassis\n"
        "    target_classes: [Person]\n    image_width: 640\n"
    )
    argv = [source, "--checkpoint", checkpoint, "--out", batched, "--batch-size", "4", "--follow-config", config]
    assert run_eval([*argv, "--no-annotated", *DETECTOR_ARGS], capsys)[0] == 0
    connections, messages = read_bag(batched)
    assert "/image_annotated" not in connections

    # The follower node's file sets the command type, frame and timer rate (ticks every 100 ms).
    assert connections["/cmd_vel"].msgtype == "geometry_msgs/msg/TwistStamped"
    first, last = messages["/camera/image_raw"][0][0], messages["/camera/image_raw"][-1][0]
    assert [t for t, _ in messages["/cmd_vel"]] == list(range(first, last + 1, 100_000_000))
    for bag_ns, raw in messages["/cmd_vel"]:
        command = deserialize_message(raw, TwistStamped)
        assert command.header.frame_id == "chassis"
        assert command.header.stamp.sec * 10**9 + command.header.stamp.nanosec == bag_ns
        assert math.isfinite(command.twist.linear.x) and math.isfinite(command.twist.angular.z)

    # Batches of 4 give the per-frame results (up to float noise of a different batch shape).
    _, reference = read_bag(single)
    # A second run gives the same messages, field for field (not byte for byte: rclpy's CDR serializer
    # leaves alignment padding uninitialised).
    again = tmp_path / "again"
    assert run_eval([source, "--checkpoint", checkpoint, "--out", again, *DETECTOR_ARGS], capsys)[0] == 0
    classes = {
        "/camera/image_raw": Image,
        "/detections": Detection2DArray,
        "/image_annotated": Image,
        "/cmd_vel": Twist,
    }

    def decoded(messages):
        return {
            topic: [(t, deserialize_message(raw, classes[topic])) for t, raw in items]
            for topic, items in messages.items()
        }

    assert decoded(read_bag(again)[1]) == decoded(reference)
    for (_, a), (_, b) in zip(reference["/detections"], messages["/detections"], strict=True):
        x = msg_to_detections(deserialize_message(a, Detection2DArray))
        y = msg_to_detections(deserialize_message(b, Detection2DArray))
        assert x.names == y.names
        np.testing.assert_allclose(x.boxes, y.boxes, atol=1e-2)


def test_ground_truth_ap_by_stamp_and_by_index(tmp_path, checkpoint, capsys):
    folder = shared_data("picar_camera", "detection", "test")
    bag, labels = tmp_path / "bag", tmp_path / "labels"
    argv = ["--images", str(folder), "--out", str(bag), "--labels-out", str(labels), "--start-time-s", "10"]
    assert make_bag.main(argv) == 0
    common = [bag, "--checkpoint", checkpoint, *DETECTOR_ARGS, "--score-threshold", "0.01", "--max-detections", "50"]
    status, stdout, _ = run_eval([*common, "--out", tmp_path / "by_stamp", "--ground-truth", labels], capsys)
    assert status == 0
    by_stamp = json.loads((tmp_path / "by_stamp" / "bag_eval_report.json").read_text())["ground_truth"]
    status, _, _ = run_eval([*common, "--out", tmp_path / "by_index", "--ground-truth", folder], capsys)
    assert status == 0
    by_index = json.loads((tmp_path / "by_index" / "bag_eval_report.json").read_text())["ground_truth"]
    assert (by_stamp["match"], by_index["match"]) == ("stamp", "index")

    # The raw bag holds the JPEGs' exact pixels: the AP equals the detector run on the files themselves.
    jpgs = sorted(folder.glob("*.jpg"))
    annotations = [parse_annotation(p.with_suffix(".xml")) for p in jpgs]
    detector = Detector.from_checkpoint(checkpoint, score_threshold=0.01, max_detections=50, device="cpu")
    expected = evaluate_detections([detector(read_image_file(p)) for p in jpgs], annotations, MODEL_CLASSES)
    for result in (by_stamp, by_index):
        assert result["frames_evaluated"] == len(jpgs)
        assert result["map"] == pytest.approx(expected.map, abs=1e-6)
        for got, want in zip(result["classes"], expected.classes, strict=True):
            assert got["name"] == want.name
            assert (got["npos"], got["true_positives"], got["false_positives"]) == (
                want.npos,
                want.true_positives,
                want.false_positives,
            )
            assert got["ap"] == (None if math.isnan(want.ap) else pytest.approx(want.ap, abs=1e-6))
    assert "| mAP" in stdout and "VOC AP (5 frames with ground truth, matched by stamp)" in stdout


def test_ground_truth_by_stamp_evaluates_only_the_labelled_frames(tmp_path, checkpoint, capsys):
    folder = shared_data("picar_camera", "detection", "test")
    bag, labels = tmp_path / "bag", tmp_path / "labels"
    argv = ["--images", str(folder), "--out", str(bag), "--labels-out", str(labels), "--start-time-s", "10"]
    assert make_bag.main(argv) == 0
    # Frames are 100 ms apart from t = 10 s: drop the labels of frames 1 and 3.
    for index in (1, 3):
        (labels / f"{10 * 10**9 + index * 100_000_000}.xml").unlink()
    status, _, _ = run_eval(
        [bag, "--checkpoint", checkpoint, "--out", tmp_path / "eval", "--ground-truth", labels, *DETECTOR_ARGS], capsys
    )
    assert status == 0
    result = json.loads((tmp_path / "eval" / "bag_eval_report.json").read_text())["ground_truth"]
    assert (result["match"], result["annotations"], result["frames_evaluated"]) == ("stamp", 3, 3)
    jpgs = sorted(folder.glob("*.jpg"))
    kept = [parse_annotation(jpgs[i].with_suffix(".xml")) for i in (0, 2, 4)]
    npos = {
        name: sum(n == name and not d for a in kept for n, d in zip(a.names, a.difficult)) for name in MODEL_CLASSES
    }
    assert {c["name"]: c["npos"] for c in result["classes"]} == npos


def test_truncated_mcap_keeps_frames_before_the_cut(tmp_path, checkpoint, capsys):
    video = shared_data("picar_camera", "video", "lane_drive.avi")
    bag = tmp_path / "bag"
    assert make_bag.main(["--video", str(video), "--out", str(bag), "--max-frames", "24", "--start-time-s", "5"]) == 0
    mcap = bag / "bag.mcap"
    with mcap.open("r+b") as f:
        f.truncate(mcap.stat().st_size // 2)
    out = tmp_path / "eval"
    status, stdout, stderr = run_eval([bag, "--checkpoint", checkpoint, "--out", out, *DETECTOR_ARGS], capsys)
    assert status == 1
    assert "damaged" in stderr and str(bag) in stderr and "**Error:**" in stdout
    _, messages = read_bag(out)  # closed properly: a normal, readable bag
    kept = len(messages["/camera/image_raw"])
    assert 0 < kept < 24
    assert len(messages["/detections"]) == kept
    report = json.loads((out / "bag_eval_report.json").read_text())
    assert report["frames"] == kept and "damaged" in report["fault"]


def split_bag(root, parts, frames):
    """lane_drive.avi as one MCAP bag split into ``parts`` files (``ros2 bag record --max-bag-size``'s layout).

    Part k holds ``frames`` frames stamped on from the end of part k - 1; metadata.yaml lists them all.
    """
    video = shared_data("picar_camera", "video", "lane_drive.avi")
    bag = root / "split"
    bag.mkdir()
    files, counts = [], 0
    for k in range(parts):
        part = root / f"part{k}"
        start = START_S + k * frames / 20  # the video is 20 fps
        argv = ["--video", video, "--out", part, "--max-frames", frames, "--start-time-s", start]
        assert make_bag.main([str(a) for a in argv]) == 0
        info = yaml.safe_load((part / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        (part / f"part{k}.mcap").rename(bag / f"split_{k}.mcap")
        files += [dict(f, path=f"split_{k}.mcap") for f in info["files"]]
        counts += info["message_count"]
    info.update(files=files, relative_file_paths=[f["path"] for f in files], message_count=counts)
    info["topics_with_message_count"][0]["message_count"] = counts
    info["starting_time"] = files[0]["starting_time"]
    (bag / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": info}))
    return bag


def test_a_split_bag_whose_last_file_was_cut_keeps_the_files_before_it(tmp_path, checkpoint, capsys):
    """The robot's battery died while recording a split bag: its last file has no footer.

    The whole bag used to be refused (exit 2, nothing evaluated); the intact files and the cut file's complete
    records are evaluated, and the report's fault names the file and how much of it was read.
    """
    frames = 12
    bag = split_bag(tmp_path, 2, frames)
    common = ["--checkpoint", checkpoint, *DETECTOR_ARGS, "--no-annotated", "--no-tracking"]
    status, _, _ = run_eval([bag, "--out", tmp_path / "whole", *common], capsys)
    assert status == 0
    report = json.loads((tmp_path / "whole" / "bag_eval_report.json").read_text())
    assert report["frames"] == 2 * frames and report["fault"] is None

    last = bag / "split_1.mcap"
    size = last.stat().st_size
    with last.open("r+b") as f:
        f.truncate(size * 2 // 3)
    out = tmp_path / "cut"
    status, _, stderr = run_eval([bag, "--out", out, *common], capsys)
    assert status == 1
    assert f"of {size * 2 // 3} bytes of split_1.mcap" in stderr and str(bag) in stderr
    _, messages = read_bag(out)
    stamps = [t for t, _ in messages["/camera/image_raw"]]
    # The first file whole, then the cut file's complete chunks (about 1 MiB, 230 KB per raw frame) in order.
    assert frames < len(stamps) < 2 * frames
    assert stamps == [round(START_S * 1e9) + i * 50_000_000 for i in range(len(stamps))]
    report = json.loads((out / "bag_eval_report.json").read_text())
    assert report["frames"] == len(stamps) == len(messages["/detections"])
    assert "split_1.mcap" in report["fault"]


def test_truncated_sqlite3_is_a_clear_error(tmp_path, camera_bags, checkpoint, capsys):
    bag = tmp_path / "cut"
    source = camera_bags["jpeg", "sqlite3"]
    bag.mkdir()
    for path in source.iterdir():
        data = path.read_bytes()
        (bag / path.name).write_bytes(data[: len(data) // 2] if path.suffix == ".db3" else data)
    status, _, stderr = run_eval([bag, "--checkpoint", checkpoint, "--out", tmp_path / "eval", "--quiet"], capsys)
    assert status == 2
    assert f"cannot read bag {bag}" in stderr and "malformed" in stderr


def test_missing_and_ambiguous_topics(tmp_path, camera_bags, checkpoint, capsys):
    source = camera_bags["raw", "mcap"]
    argv = [source, "--checkpoint", checkpoint, "--out", tmp_path / "a", "--quiet"]
    status, _, stderr = run_eval([*argv, "--topic", "/front/image_raw"], capsys)
    assert status == 2 and "'/front/image_raw' is not in the bag" in stderr and "/camera/image_raw" in stderr
    assert not (tmp_path / "a").exists()

    two = tmp_path / "two"
    with open_writer(two, "mcap") as writer:
        for topic in ("/left/image_raw", "/right/image_raw"):
            msg = rgb_to_image_msg(np.zeros((48, 64, 3), np.uint8), Header(frame_id="cam"))
            writer.write(add_topic(writer, topic, "sensor_msgs/msg/Image"), 1, serialize(msg))
    status, _, stderr = run_eval([two, "--checkpoint", checkpoint, "--out", tmp_path / "b", "--quiet"], capsys)
    assert status == 2 and "several image topics" in stderr and "/left/image_raw" in stderr
    status, _, _ = run_eval(
        [two, "--checkpoint", checkpoint, "--out", tmp_path / "c", "--topic", "/right/image_raw"], capsys
    )
    assert status == 0


def test_bad_frames_are_counted_and_skipped(tmp_path, checkpoint, capsys):
    bag = tmp_path / "bag"
    rng = np.random.default_rng(0)
    with open_writer(bag, "sqlite3") as writer:
        connection = add_topic(writer, "/cam/image_raw", "sensor_msgs/msg/Image")
        for i in range(5):
            header = Header(frame_id="cam")
            header.stamp.sec = 100 + i
            msg = rgb_to_image_msg(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), header)
            if i == 2:
                msg.encoding = "bayer_xyz99"
            raw = serialize(msg)
            if i == 3:
                raw = raw[:40]  # a message cut inside its CDR: rclpy cannot deserialise it
            writer.write(connection, (100 + i) * 10**9, raw)
    out = tmp_path / "eval"
    status, stdout, _ = run_eval([bag, "--checkpoint", checkpoint, "--out", out, *DETECTOR_ARGS], capsys)
    assert status == 0
    report = json.loads((out / "bag_eval_report.json").read_text())
    assert (report["frames"], report["processed_frames"], report["bad_frames"]) == (5, 3, 2)
    unknown, cut = report["bad_frame_examples"]
    assert unknown["index"] == 2 and "bayer_xyz99" in unknown["error"] and "bayer_xyz99" in stdout
    assert cut["index"] == 3 and "cannot deserialize sensor_msgs/msg/Image" in cut["error"]
    _, messages = read_bag(out)
    assert len(messages["/cam/image_raw"]) == 5 and len(messages["/detections"]) == 3
    stamps = [deserialize_message(raw, Detection2DArray).header.stamp.sec for _, raw in messages["/detections"]]
    assert stamps == [100, 101, 104]


def test_bad_options_fail_before_any_output(tmp_path, camera_bags, checkpoint, capsys):
    source = camera_bags["raw", "mcap"]
    out = tmp_path / "eval"
    base = [source, "--checkpoint", checkpoint, "--out", out, "--quiet"]
    voc_labels = tmp_path / "voc_labels"  # VOC classes ("person", ...) against the picar checkpoint
    voc_labels.mkdir()
    shutil.copy(shared_data("voc2012_sample", "VOC2012", "Annotations", "2007_000129.xml"), voc_labels)
    cases = [
        (["--ground-truth", voc_labels], "ground-truth classes ['bicycle', 'person'] in"),
        (["--follow-param", "no_such=1"], "--follow-param"),
        (["--follow-param", "min_score=high"], "min_score must be a number, got 'high'"),
        (["--follow-classes", "Unicorn"], "Unicorn"),
        (["--ground-truth", tmp_path / "nowhere"], "does not exist"),
        (["--class-filter", "Unicorn"], "Unicorn"),
    ]
    for extra, message in cases:
        status, _, stderr = run_eval([*base, *extra], capsys)
        assert status == 2 and message in stderr
        assert not out.exists()
    status, _, stderr = run_eval([source, "--checkpoint", tmp_path / "none.pt", "--out", out], capsys)
    assert status == 2 and "none.pt" in stderr
    # The bag is checked before the model is loaded: a wrong path is named, not the (also missing) checkpoint.
    status, _, stderr = run_eval([tmp_path / "no_bag", "--checkpoint", tmp_path / "none.pt", "--out", out], capsys)
    assert status == 2 and "no_bag does not exist" in stderr and "none.pt" not in stderr
    # The follower's default target "person" is not a picar class ("Person"): said, not silently idle.
    status, _, stderr = run_eval([*base, "--track-param", "no_such=1"], capsys)
    assert status == 2 and "no_such" in stderr and not out.exists()
    assert "target_classes ['person'] are not among the checkpoint's classes ['Person', " in stderr
    assert "did you mean 'Person' for 'person'?" in stderr
    # An output that exists already is refused before the model loads (the missing checkpoint is not reached).
    out.mkdir()
    status, _, stderr = run_eval([source, "--checkpoint", tmp_path / "none.pt", "--out", out], capsys)
    assert status == 2 and "exists already" in stderr and "none.pt" not in stderr


def test_the_typestore_is_built_once():
    """It parses every vision_msgs definition: once per process, not per topic written."""
    assert bagio.typestore() is bagio.typestore()


def test_the_follower_uses_the_bags_camera_info(tmp_path, camera_bags, checkpoint, capsys):
    """Bearing from the recorded calibration (as the node takes it from camera_info), not the configured FOV."""
    _, source = read_bag(camera_bags["raw", "mcap"])
    bag = tmp_path / "calibrated"
    camera = PinholeCamera(320, 240, fx_px=210.0, cx_px=150.0)  # the lane video's size, an off-centre camera
    with open_writer(bag, "mcap") as writer:
        images = add_topic(writer, "/camera/image_raw", "sensor_msgs/msg/Image")
        infos = add_topic(writer, "/camera/camera_info", "sensor_msgs/msg/CameraInfo")
        for k, (bag_ns, raw) in enumerate(source["/camera/image_raw"]):
            header = deserialize_message(raw, Image).header
            info = CameraInfo(width=320, height=240) if k == 0 else camera_info_msg(camera, header)  # 1st: no K
            writer.write(infos, bag_ns, serialize(info))
            writer.write(images, bag_ns, raw)
    out = tmp_path / "eval"
    argv = [bag, "--checkpoint", checkpoint, "--out", out, *DETECTOR_ARGS, "--no-annotated"]
    follow = [
        "--follow-classes",
        *MODEL_CLASSES,
        "--follow-param",
        "min_score=0.0",
        "--track-param",
        "track_high_score=0.1",
    ]
    status, stdout, _ = run_eval([*argv, *follow], capsys)
    assert status == 0
    report = json.loads((out / "bag_eval_report.json").read_text())["cmd_vel"]["camera"]
    assert report == {
        "source": "CameraInfo",
        "camera_info_topic": "/camera/camera_info",
        "bad_camera_infos": 1,  # the uncalibrated one, ignored like the node does
        "width_px": 320,
        "height_px": 240,
        "fx_px": 210.0,
        "cx_px": 150.0,
    }
    assert "follower bearing from the CameraInfo: 320x240 px, fx 210.0 px, cx 150.0 px" in stdout
    # Replayed through a controller that knows the camera from the first calibrated message on, the commands agree.
    _, messages = read_bag(out)
    controller = FollowController(
        settings_from_mapping(
            FollowParams,
            {"image_width": 320, "image_height": 240, "target_classes": list(MODEL_CLASSES), "min_score": 0.0},
        )
    )
    moving = 0
    for k, ((tick_ns, cmd_raw), (_, det_raw)) in enumerate(
        zip(messages["/cmd_vel"], messages["/detections"], strict=True)
    ):
        controller.measured_camera = camera if k >= 1 else None
        array = deserialize_message(det_raw, Detection2DArray)
        stamp_s = array.header.stamp.sec + array.header.stamp.nanosec * 1e-9
        expected = controller.update(msg_to_detections(array), stamp_s, tick_ns / 1e9)
        twist = deserialize_message(cmd_raw, Twist)
        assert twist.angular.z == pytest.approx(expected.angular_radps, rel=1e-5, abs=1e-9)
        assert twist.linear.x == pytest.approx(expected.linear_mps, rel=1e-5, abs=1e-9)
        moving += twist.angular.z != 0.0
    assert moving > 0
    # A named topic the bag lacks is refused before any output.
    status, _, stderr = run_eval([*argv, "--out", tmp_path / "none", "--camera-info-topic", "/cam/info"], capsys)
    assert status == 2 and "--camera-info-topic '/cam/info'" in stderr and not (tmp_path / "none").exists()


def test_an_exported_model_on_onnxruntime_gives_the_checkpoints_detections(tmp_path, camera_bags, checkpoint, capsys):
    """--backend with an export: same detections as the checkpoint through torch; the report says what ran."""
    exported = tmp_path / "lite.onnx"
    assert export_model.main(["--checkpoint", str(checkpoint), "--out", str(exported), "--quiet"]) == 0
    source = camera_bags["jpeg", "mcap"]
    reference, fast = tmp_path / "torch", tmp_path / "ort"
    assert run_eval([source, "--checkpoint", checkpoint, "--out", reference, *DETECTOR_ARGS], capsys)[0] == 0
    argv = [source, "--checkpoint", exported, "--backend", "onnxruntime", "--threads", "1", "--out", fast]
    status, _, err = run_eval([*argv, *DETECTOR_ARGS], capsys)
    assert status == 0, err
    expected, got = read_bag(reference)[1]["/detections"], read_bag(fast)[1]["/detections"]
    assert len(got) == len(expected) == FRAMES
    for (_, a), (_, b) in zip(expected, got, strict=True):
        x = msg_to_detections(deserialize_message(a, Detection2DArray))
        y = msg_to_detections(deserialize_message(b, Detection2DArray))
        assert len(x) == 5 and x.names == y.names
        np.testing.assert_allclose(x.boxes, y.boxes, atol=0.5)
    assert json.loads((fast / "bag_eval_report.json").read_text())["backend"] == "onnxruntime fp32 x1 threads"
    status, _, err = run_eval([*argv[:-1], tmp_path / "bad", "--precision", "int8", *DETECTOR_ARGS], capsys)
    assert status == 2 and "fp32 export; precision int8 needs an int8 export" in err


def test_track_ids_in_the_output_bag_are_the_core_trackers_and_the_report_counts_tracks(
    tmp_path, camera_bags, checkpoint, capsys
):
    """On the rover video: Detection2D.id as the node's tracker writes it, tracks and their lengths reported."""
    source, out = camera_bags["raw", "mcap"], tmp_path / "eval"
    # The untrained model scores about 1/7: tracked from 0.1 up, like a detector node with these track_* values.
    low = ["--track-param", "track_high_score=0.1", "--track-param", "track_low_score=0.1"]
    status, stdout, _ = run_eval([source, "--checkpoint", checkpoint, "--out", out, *DETECTOR_ARGS, *low], capsys)
    assert status == 0
    _, messages = read_bag(out)
    detector = Detector.from_checkpoint(checkpoint, score_threshold=0.1, max_detections=5, device="cpu")
    tracker = Tracker(TrackerParams(track_high_score=0.1, track_low_score=0.1))
    lengths = Counter()
    for (_, image_raw), (_, det_raw) in zip(messages["/camera/image_raw"], messages["/detections"], strict=True):
        image = deserialize_message(image_raw, Image)
        array = deserialize_message(det_raw, Detection2DArray)
        stamp_s = image.header.stamp.sec + image.header.stamp.nanosec * 1e-9
        expected = tracker.update(detector(image_msg_to_rgb(image)), stamp_s)
        assert [d.id for d in array.detections] == list(expected.track_ids)
        lengths.update(i for i in expected.track_ids if i)
    assert len(lengths) >= 1 and max(lengths.values()) >= FRAMES // 2, "the video's detections should be tracked"
    tracking = json.loads((out / "bag_eval_report.json").read_text())["tracking"]
    assert tracking["tracks"] == len(lengths) and tracking["track_length_frames"]["max"] == max(lengths.values())
    assert tracking["tracked_detections"] == sum(lengths.values())
    assert f"- tracks: {len(lengths)} (length in frames: mean" in stdout
    assert tracking["ground_truth"] is None

    # Ground-truth tracks (MOT text): one true object on the longest track's boxes, except one frame where it
    # lies on another track's box: two identity switches (away and back).
    arrays = [deserialize_message(raw, Detection2DArray) for _, raw in messages["/detections"]]
    longest = lengths.most_common(1)[0][0]
    frames = [k for k, a in enumerate(arrays) if any(d.id == longest for d in a.detections)]
    detour = next(k for k in frames[1:-1] if any(d.id not in ("", longest) for d in arrays[k].detections))
    lines = ["# frame, id, left, top, width, height"]
    for k in frames:
        wanted = (lambda i: i not in ("", longest)) if k == detour else (lambda i: i == longest)
        b = next(d.bbox for d in arrays[k].detections if wanted(d.id))
        x, y = b.center.position.x - b.size_x / 2, b.center.position.y - b.size_y / 2
        lines.append(f"{k + 1}, 7, {x}, {y}, {b.size_x}, {b.size_y}, 1, -1, -1")
    truth = tmp_path / "gt.txt"
    truth.write_text("\n".join(lines) + "\n")
    out = tmp_path / "with_truth"
    argv = [source, "--checkpoint", checkpoint, "--out", out, *DETECTOR_ARGS, *low, "--gt-tracks", truth]
    status, stdout, _ = run_eval(argv, capsys)
    assert status == 0
    truth_report = json.loads((out / "bag_eval_report.json").read_text())["tracking"]["ground_truth"]
    assert truth_report == {
        "file": str(truth),
        "objects": 1,
        "boxes": len(frames),
        "matched_with_id": len(frames),
        "id_switches": 2,
    }
    assert f"id switches against `{truth}`: 2 (1 objects, {len(frames)} of {len(frames)} boxes" in stdout
    truth.write_text("1, 7, 10, 10, -5, 20\n")
    status, _, stderr = run_eval([*argv[:4], tmp_path / "never", *argv[5:]], capsys)
    assert status == 2 and "gt.txt:1: frame must be >= 1 and the box finite with a positive size" in stderr
    assert not (tmp_path / "never").exists()

    # --no-tracking: empty ids, no tracking report; a bad --track-param is refused before any output.
    untracked = tmp_path / "untracked"
    argv = [source, "--checkpoint", checkpoint, "--out", untracked, *DETECTOR_ARGS, "--no-tracking", "--no-annotated"]
    assert run_eval(argv, capsys)[0] == 0
    assert all(
        d.id == ""
        for _, raw in read_bag(untracked)[1]["/detections"]
        for d in deserialize_message(raw, Detection2DArray).detections
    )
    assert json.loads((untracked / "bag_eval_report.json").read_text())["tracking"] is None
    refused = tmp_path / "refused"
    status, _, stderr = run_eval(
        [source, "--checkpoint", checkpoint, "--out", refused, "--track-param", "no_such=1"], capsys
    )
    assert status == 2 and "--track-param 'no_such=1'" in stderr and not refused.exists()
    status, _, stderr = run_eval(
        [source, "--checkpoint", checkpoint, "--out", refused, "--track-param", "track_min_hits=many"], capsys
    )
    assert status == 2 and "track_min_hits must be an integer, got 'many'" in stderr and not refused.exists()


def test_labels_of_another_make_bag_run_are_refused_before_the_model_loads(tmp_path, capsys):
    """make_bag stamps from --start-time-s: a bag made again has new stamps, so the first run's labels match no frame.

    The refusal comes from the frames' header stamps alone: the checkpoint named does not exist, and is never reached.
    """
    folder = shared_data("picar_camera", "detection", "test")
    first, labels, again = tmp_path / "first", tmp_path / "labels", tmp_path / "again"
    assert make_bag.main(["--images", str(folder), "--out", str(first), "--labels-out", str(labels)]) == 0
    assert make_bag.main(["--images", str(folder), "--out", str(again), "--start-time-s", "10"]) == 0
    capsys.readouterr()  # make_bag's own output
    out = tmp_path / "eval"
    common = ["--checkpoint", tmp_path / "none.pt", "--out", out, "--ground-truth", labels, "--quiet"]
    status, stdout, stderr = run_eval([again, *common], capsys)
    assert status == 2 and not stdout and not out.exists()
    assert f"no annotation in ground-truth folder {labels} matches a frame of /camera/image_raw" in stderr
    assert "the 5 frames read are stamped 10000000000 .. 10400000000 ns" in stderr and "none.pt" not in stderr
    # Only the first frame's label, with --max-frames 1: that frame is read and matches, so the run goes on.
    for path in sorted(labels.glob("*.xml"))[1:]:
        path.unlink()
    status, _, stderr = run_eval([first, *common, "--max-frames", "1"], capsys)
    assert status == 2 and "none.pt" in stderr  # past the labels, at the (missing) model
    # Labels for the later frames only, which --max-frames 1 never reads: nothing to score either.
    kept = next(labels.glob("*.xml"))
    kept.rename(labels / f"{int(kept.stem) + 100_000_000}.xml")
    status, _, stderr = run_eval([first, *common, "--max-frames", "1"], capsys)
    assert status == 2 and "matches a frame" in stderr and "the 1 frames read" in stderr


def test_the_report_folder_is_made_or_refused_before_the_run(tmp_path, camera_bags, checkpoint, capsys):
    """--report in folders that do not exist yet: made at the end; one that cannot be made fails before any output."""
    source = camera_bags["raw", "mcap"]
    out = tmp_path / "eval"
    base = [source, "--checkpoint", checkpoint, "--out", out, *DETECTOR_ARGS, "--max-frames", "2"]
    (tmp_path / "blocker").write_text("a file where the report's folder would go")
    (tmp_path / "a_folder").mkdir()
    for report, message in (
        (tmp_path / "blocker" / "day1" / "report.json", f"{tmp_path / 'blocker'} is a file"),
        (tmp_path / "a_folder", f"--report {tmp_path / 'a_folder'} is a folder"),
    ):
        status, _, stderr = run_eval([*base, "--report", report], capsys)
        assert status == 2 and message in stderr
        assert not out.exists()
    report = tmp_path / "reports" / "day1" / "report.json"
    status, stdout, _ = run_eval([*base, "--report", report], capsys)
    assert status == 0 and f"report: {report}" in stdout
    assert json.loads(report.read_text())["frames"] == 2
    assert not (out / "bag_eval_report.json").exists()


def test_the_current_folder_as_the_bag_writes_its_output_beside_it(
    tmp_path, camera_bags, checkpoint, capsys, monkeypatch
):
    """``bag_eval .`` inside a bag folder: the default output is ``../<folder>_eval``, as for the folder's own name."""
    bag = tmp_path / "drive"
    shutil.copytree(camera_bags["jpeg", "mcap"], bag)
    monkeypatch.chdir(bag)
    status, _, _ = run_eval([".", "--checkpoint", checkpoint, *DETECTOR_ARGS, "--max-frames", "2"], capsys)
    assert status == 0
    report = json.loads((tmp_path / "drive_eval" / "bag_eval_report.json").read_text())
    assert report["output_bag"] == str(tmp_path / "drive_eval") and report["frames"] == 2
    # The filesystem root has no name to derive one from: said before anything runs.
    status, _, stderr = run_eval(["/", "--checkpoint", checkpoint, "--quiet"], capsys)
    assert status == 2 and "input bag / has no folder name for the default output: give --out" in stderr


def test_ctrl_c_writes_a_report_that_says_the_run_was_cut_short(tmp_path, checkpoint):
    """Ctrl-C used to end in a traceback with the output bag closed as if complete and no report at all."""
    video = shared_data("picar_camera", "video", "lane_drive.avi")
    bag, out = tmp_path / "drive", tmp_path / "eval"
    assert make_bag.main(["--video", str(video), "--out", str(bag), "--compressed", "--start-time-s", "5"]) == 0
    argv = [str(bag), "--checkpoint", str(checkpoint), "--out", str(out), "--threads", "1"]
    argv += ["--score-threshold", "0.1", "--device", "cpu", "--follow-classes", "Person"]
    status, stderr = interrupt_after("ssd_ros.tools.bag_eval", argv, frames=3)
    assert status == 130, stderr
    assert "Traceback" not in stderr
    report = json.loads((out / "bag_eval_report.json").read_text())
    _, messages = read_bag(out)
    written = len(messages["/camera/image_raw/compressed"])
    assert 2 <= written < 222 and report["frames"] == written == len(messages["/detections"])
    expected = f"interrupted (Ctrl-C) after {written} frames of /camera/image_raw/compressed"
    assert report["fault"].startswith(expected) and f"bag_eval: error: {expected}" in stderr
    # The follower's ticks run to the last written frame, as at the end of a whole bag.
    assert messages["/cmd_vel"][-1][0] == messages["/camera/image_raw/compressed"][-1][0]


def test_a_control_rate_of_zero_or_infinity_is_refused(tmp_path, camera_bags, checkpoint, capsys):
    """0 Hz silently ran at the config's rate; inf made a timer period of 0 ns and never returned."""
    base = [camera_bags["raw", "mcap"], "--checkpoint", checkpoint, "--out", tmp_path / "eval", *DETECTOR_ARGS]
    for rate in ("0", "inf", "nan", "-20"):
        status, _, stderr = run_eval([*base, "--control-rate-hz", rate], capsys)
        assert status == 2 and f"the follower's rate must be a finite number > 0 Hz, got {float(rate)}" in stderr
        assert not (tmp_path / "eval").exists()
