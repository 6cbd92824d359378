"""Stand-in for rviz2 in the launch tests (no rviz2 without apt ROS): subscribes ``/image_annotated``, the
absolute topic of config/rover.rviz's Image display, so remap rules given to rviz2 act on it as on the real
display's subscription. Ends like the real one when its window is closed: exit status 0 on SIGTERM/SIGINT.

    python rviz_stand_in.py [--ros-args ...]
"""

from __future__ import annotations

import sys

from rclpy.node import Node
from sensor_msgs.msg import Image

from ssd_ros.ros.runner import run_node


def stand_in() -> Node:
    """rviz2's node with the Image display's subscription."""
    node = Node("rviz2")
    subscription = node.create_subscription(Image, "/image_annotated", lambda msg: None, 1)
    print(f"rviz2 stand-in showing {subscription.topic_name}", flush=True)
    return node


if __name__ == "__main__":
    sys.exit(run_node("rviz2", stand_in, args=sys.argv))  # exit status 0 on SIGTERM/SIGINT, as rviz2
