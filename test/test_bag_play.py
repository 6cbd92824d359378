"""bag_play over real DDS: a topic of a type not installed here is skipped, the rest is played."""

import subprocess
import threading
import time

import rclpy
from conftest import EXECUTABLES, ros_env
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import String

from ssd_ros.tools.bagio import add_topic, open_writer, serialize


def test_unknown_message_types_are_skipped_and_the_rest_is_played(tmp_path):
    bag = tmp_path / "robot_bag"
    with open_writer(bag, "mcap") as writer:
        custom = writer.add_connection("/custom", "foo_msgs/msg/Bar", msgdef="int32 x", rihs01="RIHS01_" + "0" * 64)
        chatter = add_topic(writer, "/chatter", "std_msgs/msg/String")
        for i in range(5):
            stamp = 10**9 + i * 50_000_000
            writer.write(custom, stamp, bytes([0, 1, 0, 0, i, 0, 0, 0]))
            writer.write(chatter, stamp, serialize(String(data=f"hello {i}")))

    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("bag_play_listener", context=context)
    received = []
    node.create_subscription(String, "/chatter", lambda msg: received.append(msg.data), 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        result = subprocess.run(
            [str(EXECUTABLES / "bag_play"), str(bag), "--start-delay", "2"],
            capture_output=True,
            text=True,
            timeout=60,
            env=ros_env(),
        )
        deadline = time.monotonic() + 5
        while len(received) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        spinner.join(5)
    assert result.returncode == 0, result.stderr
    assert "skipping /custom: its type foo_msgs/msg/Bar is not installed" in result.stderr
    assert "published 5 messages" in result.stdout
    assert received == [f"hello {i}" for i in range(5)]
