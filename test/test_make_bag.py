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
from tool_interrupt import interrupt_after

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
        assert f"--rate-hz: must be a finite rate > 0 Hz (leave it out for the default), got {rate}" in (
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


def test_start_times_a_header_stamp_cannot_hold_are_refused(tmp_path, capsys):
    """A stamp's seconds are an int32 >= 0 here: nan crashed, -1 left a bag without metadata, 3e9 wrapped negative."""
    video = shared_data("picar_camera", "video", "lane_drive.avi")
    for start in ("nan", "-1", "3e9", "inf"):
        out = tmp_path / f"bag_{start}"
        with pytest.raises(SystemExit):
            make_bag.main(["--video", str(video), "--out", str(out), "--max-frames", "2", f"--start-time-s={start}"])
        assert f"--start-time-s: must be in [0, 2**31) s, the range of a ROS header stamp, got {start}" in (
            capsys.readouterr().err
        )
        assert not out.exists()
    # The last second a stamp holds is fine for the first frame; a later frame past it stops the bag there.
    out = tmp_path / "late"
    argv = ["--video", str(video), "--out", str(out), "--max-frames", "3", "--start-time-s", str(2**31 - 0.06)]
    assert make_bag.main(argv) == 2
    assert "frame 2 would be stamped" in capsys.readouterr().err
    with Reader(out) as reader:
        stamps = [t for _, t, _ in reader.messages()]
    assert stamps == [2**31 * 10**9 - 60_000_000, 2**31 * 10**9 - 10_000_000]


def test_a_labels_folder_that_cannot_take_this_runs_labels_is_refused_before_the_bag(tmp_path, capsys):
    """--labels-out used to be made after the bag: a file there crashed with a traceback, a bag already written."""
    folder = shared_data("picar_camera", "detection", "test")
    blocker = tmp_path / "labels_file"
    blocker.write_text("not a folder")
    out = tmp_path / "bag"
    assert make_bag.main(["--images", str(folder), "--out", str(out), "--labels-out", str(blocker)]) == 2
    assert f"make_bag: error: --labels-out {blocker} is a file" in capsys.readouterr().err
    assert not out.exists()
    # An earlier run's labels (stamped from its own start time) would mix with this run's as its ground truth.
    labels = tmp_path / "labels"
    assert make_bag.main(["--images", str(folder), "--out", str(tmp_path / "first"), "--labels-out", str(labels)]) == 0
    assert make_bag.main(["--images", str(folder), "--out", str(out), "--labels-out", str(labels)]) == 2
    assert f"--labels-out {labels} holds XML files already" in capsys.readouterr().err
    assert not out.exists() and len(list(labels.glob("*.xml"))) == 5


def test_ctrl_c_leaves_a_readable_bag_said_to_be_partial_with_its_labels(tmp_path):
    """Ctrl-C used to end in a traceback, the bag closed as if complete and none of its frames' labels copied."""
    source = shared_data("picar_camera", "detection", "test")
    folder = tmp_path / "frames"
    folder.mkdir()
    jpgs = sorted(source.glob("*.jpg"))
    for i in range(2000):  # far more frames than can be written between the progress seen and the signal
        jpg = jpgs[i % len(jpgs)]
        (folder / f"{i:05d}.jpg").symlink_to(jpg)
        (folder / f"{i:05d}.xml").symlink_to(jpg.with_suffix(".xml"))
    out, labels = tmp_path / "bag", tmp_path / "labels"
    argv = ["--images", str(folder), "--out", str(out), "--labels-out", str(labels), "--start-time-s", "10"]
    status, stderr = interrupt_after("ssd_ros.tools.make_bag", argv, frames=3)
    assert status == 130, stderr
    assert "Traceback" not in stderr
    with open_bag(out) as (reader, salvage_note):
        stamps = [t for _, t, _ in reader.messages()]
    assert salvage_note is None and 3 <= len(stamps) < 2000
    assert f"make_bag: interrupted: {out} holds only the first {len(stamps)} frames" in stderr
    assert stamps == [10 * 10**9 + i * 100_000_000 for i in range(len(stamps))]
    assert sorted(int(p.stem) for p in labels.glob("*.xml")) == stamps
