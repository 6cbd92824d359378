"""bag_play over real DDS: a topic of a type not installed here is skipped, the rest is played; a bag's type
names never import (run) anything but installed ROS 2 interface packages."""

import subprocess
import sys

import pytest
from conftest import EXECUTABLES, RosProbe, ros_env
from std_msgs.msg import String

from ssd_ros.tools.bagio import BagToolError, add_topic, message_class, open_writer, serialize, typestore


def test_unknown_message_types_are_skipped_and_the_rest_is_played(tmp_path):
    bag = tmp_path / "robot_bag"
    with open_writer(bag, "mcap") as writer:
        custom = writer.add_connection("/custom", "foo_msgs/msg/Bar", msgdef="int32 x", rihs01="RIHS01_" + "0" * 64)
        # Type names that would import (and run) a non-interface module if taken at face value.
        for topic, msgtype in [
            ("/zen", "this/msg/Zen"),
            ("/odd", "std_msgs/msg/String/x"),
            ("/none", "std_msgs/msg/Nope"),
        ]:
            writer.add_connection(topic, msgtype, msgdef="int32 x", rihs01="RIHS01_" + "0" * 64)
        chatter = add_topic(writer, "/chatter", "std_msgs/msg/String")
        for i in range(5):
            stamp = 10**9 + i * 50_000_000
            writer.write(custom, stamp, bytes([0, 1, 0, 0, i, 0, 0, 0]))
            writer.write(chatter, stamp, serialize(String(data=f"hello {i}")))

    received = []
    with RosProbe("bag_play_listener", background=True) as probe:
        probe.node.create_subscription(String, "/chatter", lambda msg: received.append(msg.data), 10)
        result = subprocess.run(
            [str(EXECUTABLES / "bag_play"), str(bag), "--start-delay", "30"],  # returns once /chatter is matched
            capture_output=True,
            text=True,
            timeout=60,
            env=ros_env(),
        )
        probe.spin_until(lambda: len(received) >= 5, 30, "the five /chatter messages", detail=lambda: f"got {received}")
    assert result.returncode == 0, result.stderr
    assert "skipping /custom: type foo_msgs/msg/Bar: foo_msgs is not an installed ROS 2 interface package" in (
        result.stderr
    )
    assert "skipping /zen: type this/msg/Zen: this is not an installed ROS 2 interface package" in result.stderr
    assert "skipping /odd: type 'std_msgs/msg/String/x' is not a ROS 2 message type name" in result.stderr
    assert "skipping /none: type std_msgs/msg/Nope: std_msgs has no message Nope" in result.stderr
    assert "Zen of Python" not in result.stdout + result.stderr, "import this must never run"
    assert "published 5 messages" in result.stdout
    assert received == [f"hello {i}" for i in range(5)]


def test_message_class_never_imports_a_module_that_is_not_an_interface_package(tmp_path, monkeypatch):
    """A planted package with a ``msg`` subpackage (but no rosidl type support) is refused before import."""
    marker = tmp_path / "ran"
    package = tmp_path / "site" / "evil_msgs"
    (package / "msg").mkdir(parents=True)
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (package / "msg" / "__init__.py").write_text("class Bar:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for msgtype in ["evil_msgs/msg/Bar", "this/msg/Zen", "os/msg/Path", "subprocess/msg/Popen"]:
        with pytest.raises(BagToolError, match="is not an installed ROS 2 interface package"):
            message_class(msgtype)
    for msgtype in ["../evil/msg/X", "sensor_msgs/msg/Image/..", "sensor_msgs.msg/Image", "sensor_msgs/srv/Image"]:
        with pytest.raises(BagToolError, match="not a ROS 2 message type name"):
            message_class(msgtype)
    assert not marker.exists() and "evil_msgs" not in sys.modules and "this" not in sys.modules
    with pytest.raises(BagToolError, match="has no message Nope"):
        message_class("sensor_msgs/msg/Nope")
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray

    assert message_class("sensor_msgs/msg/Image") is Image
    assert message_class("vision_msgs/msg/Detection2DArray") is Detection2DArray


def test_a_folder_that_is_no_bag_is_named_as_such(tmp_path):
    from ssd_ros.tools.bagio import open_bag

    (tmp_path / "notes.txt").write_text("not a bag")
    with pytest.raises(BagToolError, match=rf"^{tmp_path} is not a rosbag2 bag: the folder has no metadata.yaml"):
        with open_bag(tmp_path):
            pass


def test_a_split_recording_without_metadata_is_pointed_at_reindex(tmp_path):
    """rosbag2 writes metadata.yaml when the recorder closes: a split recording cut by a power loss has none."""
    import shutil

    from ssd_ros.tools.bagio import open_bag

    with open_writer(tmp_path / "one", "mcap") as writer:
        writer.write(add_topic(writer, "/chatter", "std_msgs/msg/String"), 1, serialize(String(data="hi")))
    cut = tmp_path / "rosbag2_cut"
    cut.mkdir()
    for i in range(2):
        shutil.copyfile(next((tmp_path / "one").glob("*.mcap")), cut / f"rosbag2_cut_{i}.mcap")
    with pytest.raises(BagToolError, match=rf"no metadata.yaml .*`ros2 bag reindex {cut}` writes one$"):
        with open_bag(cut):
            pass


def test_a_bag_that_is_not_there_is_a_usage_error(tmp_path):
    """Exit status 2 and one line naming the path, as the other tools; DDS never starts."""
    result = subprocess.run(
        [str(EXECUTABLES / "bag_play"), str(tmp_path / "missing_bag")], capture_output=True, text=True, env=ros_env()
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(f"bag {tmp_path / 'missing_bag'}: no such file or directory")


def test_clock_ticks_between_messages_and_never_goes_back(tmp_path):
    """--clock: bag time at each message and, between two messages 2 s apart, at --clock-hz, as ros2 bag play does,
    so a use_sim_time node's timers tick at their own rate rather than once per frame."""
    from rosgraph_msgs.msg import Clock

    bag = tmp_path / "sparse_bag"
    stamps = [5 * 10**9, 7 * 10**9]
    with open_writer(bag, "mcap") as writer:
        chatter = add_topic(writer, "/chatter", "std_msgs/msg/String")
        for i, stamp in enumerate(stamps):
            writer.write(chatter, stamp, serialize(String(data=f"hello {i}")))
    ticks, received = [], []
    with RosProbe("bag_play_clock_listener", background=True) as probe:
        probe.node.create_subscription(String, "/chatter", lambda msg: received.append(msg.data), 10)
        probe.node.create_subscription(
            Clock, "/clock", lambda msg: ticks.append(msg.clock.sec * 10**9 + msg.clock.nanosec), 100
        )
        result = subprocess.run(
            [str(EXECUTABLES / "bag_play"), str(bag), "--clock", "--clock-hz", "20", "--start-delay", "30"],
            capture_output=True,
            text=True,
            timeout=60,
            env=ros_env(),
        )
        probe.spin_until(
            lambda: len(received) == 2 and ticks and ticks[-1] == stamps[1],
            30,
            "the two /chatter messages and the last message's bag time",
            detail=lambda: f"{ticks}",
        )
    assert result.returncode == 0, result.stderr
    assert ticks == sorted(ticks), "bag time went back"
    assert ticks[0] == stamps[0] and ticks[-1] == stamps[1]
    between = [t for t in ticks if stamps[0] < t < stamps[1]]
    # 40 ticks at 20 Hz over the 2 s; a loaded machine may run the player late, never leave it without ticks.
    assert len(between) >= 5, ticks


def test_a_latched_topic_is_offered_as_recorded_so_transient_local_readers_match(tmp_path):
    """/tf_static-like topics: readers ask for transient local durability, which a volatile writer does not match."""
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    never = QosTime(sec=0, nsec=0)
    latched = Qos(
        QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL,
        never, never, QosLiveliness.AUTOMATIC, never, False,
    )  # fmt: skip
    bag = tmp_path / "latched_bag"
    with open_writer(bag, "mcap") as writer:
        static = writer.add_connection(
            "/static_note", "std_msgs/msg/String", typestore=typestore(), offered_qos_profiles=[latched]
        )
        writer.write(static, 10**9, serialize(String(data="recorded once")))
    received = []
    reader_qos = QoSProfile(depth=1, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    with RosProbe("bag_play_latched_listener", background=True) as probe:
        probe.node.create_subscription(String, "/static_note", lambda msg: received.append(msg.data), reader_qos)
        result = subprocess.run(
            [str(EXECUTABLES / "bag_play"), str(bag), "--start-delay", "30"],  # returns once the reader matched
            capture_output=True,
            text=True,
            timeout=60,
            env=ros_env(),
        )
        probe.spin_until(lambda: received, 30, "the latched message")
    assert result.returncode == 0, result.stderr
    assert received == ["recorded once"]
