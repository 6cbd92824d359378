"""make_bag: camera bags from a video or an image folder, read back with rosbags + rclpy deserialisation."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from conftest import shared_data
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader
from sensor_msgs.msg import CompressedImage, Image

from ssd_ros.tools import make_bag
from ssd_ros.tools.bagio import open_bag, recover_mcap

FRAMES = 8
START_S = 1_700_000_000.25


def video_frames_rgb(path, count):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < count:
        ok, bgr = capture.read()
        assert ok
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def read_messages(bag):
    with Reader(bag) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        messages = [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]
    return topics, messages


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "jpeg"])
def test_video_bag_round_trip(tmp_path, storage, encoding):
    video = shared_data("picar_camera", "video", "lane_drive.avi")
    out = tmp_path / "bag"
    argv = ["--video", str(video), "--out", str(out), "--storage", storage, "--max-frames", str(FRAMES)]
    argv += ["--start-time-s", str(START_S), "--frame-id", "cam"]
    argv += ["--compressed"] if encoding == "jpeg" else ["--encoding", encoding]
    assert make_bag.main(argv) == 0

    topics, messages = read_messages(out)
    topic = "/camera/image_raw/compressed" if encoding == "jpeg" else "/camera/image_raw"
    assert topics == {topic: "sensor_msgs/msg/CompressedImage" if encoding == "jpeg" else "sensor_msgs/msg/Image"}
    assert len(messages) == FRAMES
    expected = video_frames_rgb(video, FRAMES)
    start_ns = round(START_S * 1e9)
    for i, (_, bag_ns, raw) in enumerate(messages):
        msg = deserialize_message(raw, CompressedImage if encoding == "jpeg" else Image)
        # lane_drive.avi is 20 fps: stamps are start + i * 50 ms, identical in header and bag.
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        assert stamp == bag_ns == start_ns + i * 50_000_000
        assert msg.header.frame_id == "cam"
        if encoding == "jpeg":
            assert msg.format == "jpeg"
            decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            assert np.abs(decoded.astype(int) - expected[i]).mean() < 3.0
        else:
            assert (msg.encoding, msg.width, msg.height, msg.step) == (encoding, 320, 240, 960)
            pixels = np.frombuffer(msg.data, np.uint8).reshape(240, 320, 3)
            np.testing.assert_array_equal(pixels if encoding == "rgb8" else pixels[:, :, ::-1], expected[i])


def test_image_folder_bag_with_labels(tmp_path):
    folder = shared_data("picar_camera", "detection", "test")
    jpgs = sorted(folder.glob("*.jpg"))
    out, labels = tmp_path / "bag", tmp_path / "labels"
    argv = ["--images", str(folder), "--out", str(out), "--storage", "sqlite3", "--start-time-s", "100"]
    assert make_bag.main([*argv, "--labels-out", str(labels), "--rate-hz", "4"]) == 0

    _, messages = read_messages(out)
    assert len(messages) == len(jpgs)
    for i, ((_, bag_ns, raw), jpg) in enumerate(zip(messages, jpgs)):
        assert bag_ns == 100 * 10**9 + i * 250_000_000
        msg = deserialize_message(raw, Image)
        rgb = cv2.cvtColor(cv2.imread(str(jpg)), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(np.frombuffer(msg.data, np.uint8).reshape(rgb.shape), rgb)
        # Each frame's annotation is copied under the frame's stamp, unchanged.
        assert (labels / f"{bag_ns}.xml").read_bytes() == jpg.with_suffix(".xml").read_bytes()
    assert len(list(labels.iterdir())) == len(jpgs)


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert make_bag.main(["--video", str(tmp_path / "missing.avi"), "--out", str(tmp_path / "a")]) == 2
    assert "cannot open video" in capsys.readouterr().err
    assert make_bag.main(["--images", str(tmp_path), "--out", str(tmp_path / "b")]) == 2
    assert "no images" in capsys.readouterr().err
    (tmp_path / "exists").mkdir()
    video = shared_data("picar_camera", "video", "lane_drive.avi")
    assert make_bag.main(["--video", str(video), "--out", str(tmp_path / "exists")]) == 2
    assert "exists already" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_bag.main(["--video", str(video), "--out", str(tmp_path / "c"), "--labels-out", str(tmp_path / "l")])
    assert "--labels-out needs --images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_bag.main(["--video", str(video), "--out", str(tmp_path / "d"), "--max-frames", "0"])
    assert "--max-frames: must be >= 1, got 0" in capsys.readouterr().err
    # 0 is not "the video's rate" (leaving the option out is): every frame would get the same stamp.
    for rate in ("0", "-5", "nan", "inf"):
        with pytest.raises(SystemExit):
            make_bag.main(["--video", str(video), "--out", str(tmp_path / "e"), "--rate-hz", rate])
        assert f"--rate-hz: must be a finite rate > 0 Hz (leave it out for the video's fps), got {rate}" in (
            capsys.readouterr().err
        )
    assert not (tmp_path / "e").exists()


def test_recover_truncated_mcap(tmp_path):
    video = shared_data("picar_camera", "video", "lane_drive.avi")
    out = tmp_path / "bag"
    assert make_bag.main(["--video", str(video), "--out", str(out), "--max-frames", "30", "--start-time-s", "1"]) == 0
    mcap = out / "bag.mcap"
    size = mcap.stat().st_size
    with mcap.open("r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(Exception, match="magic"):
        Reader(out).open()
    kept = recover_mcap(mcap, tmp_path / "recovered.mcap")
    assert 0 < kept <= size // 2
    with Reader(tmp_path / "recovered.mcap") as reader:
        stamps = [t for _, t, _ in reader.messages()]
    # Every complete chunk before the cut survives (chunks are about 1 MiB, 230 KB per raw frame).
    assert 5 <= len(stamps) <= (size // 2) // (320 * 240 * 3)
    assert stamps == [10**9 + i * 50_000_000 for i in range(len(stamps))]
    with open_bag(out) as (reader, note):
        assert "damaged" in note and str(out) in note
        assert sum(1 for _ in reader.messages()) == len(stamps)


def test_a_truncated_image_stops_with_its_name_and_keeps_the_frames_before_it(tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    jpgs = sorted(shared_data("picar_camera", "detection", "train").glob("*.jpg"))[:3]
    for jpg in jpgs[:2]:
        shutil.copy(jpg, folder / jpg.name)
    broken = folder / jpgs[2].name
    broken.write_bytes(jpgs[2].read_bytes()[:5000])  # cut in transfer: libjpeg alone would fill it with grey
    out = tmp_path / "bag"
    assert make_bag.main(["--images", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"make_bag: error: {broken}: truncated JPEG" in err and f"the 2 frames before it are in {out}" in err
    assert "Traceback" not in err
    with open_bag(out) as (reader, salvage_note):
        assert salvage_note is None and sum(1 for _ in reader.messages()) == 2
