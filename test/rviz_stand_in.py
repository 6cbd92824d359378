"""Stand-in for rviz2 in the launch tests (no rviz2 without apt ROS): subscribes ``/image_annotated``, the
absolute topic of config/rover.rviz's Image display, so remap rules given to rviz2 act on it as on the real
display's subscription. Ends like the real one when its window is closed: exit status 0 on SIGTERM/SIGINT.

    python rviz_stand_in.py [--ros-args ...]
"""

from __future__ import annotations

import sys

import rclpy
from rclpy.executors import ExternalShutdownException
from sensor_msgs.msg import Image


def main() -> None:
    rclpy.init(args=sys.argv)  # rclpy's handlers turn SIGINT and SIGTERM into a shutdown
    node = rclpy.create_node("rviz2")
    subscription = node.create_subscription(Image, "/image_annotated", lambda msg: None, 1)
    print(f"rviz2 stand-in showing {subscription.topic_name}", flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
