"""Stand-in for the camera drivers rover.launch.py starts (neither is installable without apt ROS).

Publishes a 640x480 frame five times a second on exactly the topic names the real driver creates, so the
launch tests can check that the detector, as launched, receives the camera's frames:

- ``camera_ros`` (christianrauch/camera_ros, CameraNode.cpp): plain publishers on ``~/image_raw``,
  ``~/image_raw/compressed`` and ``~/camera_info``: all under the node's name.
- ``v4l2_camera`` (its v4l2_camera.cpp): ``image_transport::create_camera_publisher(this, "image_raw")``.
  image_transport (jazzy: publisher.cpp, simple_publisher_plugin.hpp, camera_publisher.cpp) expands the
  base name without remapping and then creates ``<base>``, ``<base>/compressed`` and the sibling
  ``camera_info`` as ordinary publishers, whose fully expanded names are what remap rules match. Plain
  rclpy publishers on ``image_raw``, ``image_raw/compressed`` and ``camera_info`` resolve the same way:
  a rule ``image_raw:=x`` moves the first and not the second.

    python camera_stand_in.py camera_ros|v4l2_camera [--ros-args ...]
"""

from __future__ import annotations

import sys

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from ssd_ros.ros.images import rgb_to_image_msg
from ssd_ros.ros.runner import run_node
from ssd_ros.vision.image_codec import encode_compressed

TOPICS = {
    "camera_ros": ("~/image_raw", "~/image_raw/compressed", "~/camera_info"),
    "v4l2_camera": ("image_raw", "image_raw/compressed", "camera_info"),
}
FRAME_ID = "stand_in_camera"  # the launch tests look for it in the detector's output headers
WIDTH, HEIGHT = 640, 480


def stand_in(driver: str) -> Node:
    """The driver's node: a gradient frame published five times a second on its topics."""
    node = Node(driver)
    raw_topic, compressed_topic, info_topic = TOPICS[driver]
    raw = node.create_publisher(Image, raw_topic, 1)
    compressed = node.create_publisher(CompressedImage, compressed_topic, 1)
    info = node.create_publisher(CameraInfo, info_topic, 1)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.stack([x * 255 // WIDTH, y * 255 // HEIGHT, np.full_like(x, 128)], axis=2).astype(np.uint8)
    jpeg = encode_compressed(rgb, "jpeg")

    def publish():
        header = Header(stamp=node.get_clock().now().to_msg(), frame_id=FRAME_ID)
        raw.publish(rgb_to_image_msg(rgb, header))
        compressed.publish(CompressedImage(header=header, format="jpeg", data=jpeg))
        info.publish(CameraInfo(header=header, width=WIDTH, height=HEIGHT))

    node.create_timer(0.2, publish)
    # Plain stdout, as a driver's own start-up messages: the launch shows it only with output="screen".
    print(f"{driver} stand-in publishing {raw.topic_name}, {compressed.topic_name}, {info.topic_name}", flush=True)
    return node


if __name__ == "__main__":
    # ssd_ros's own node runner: ends with exit status 0 on Ctrl-C/SIGTERM, as the real drivers do.
    sys.exit(run_node(sys.argv[1], lambda: stand_in(sys.argv[1]), args=sys.argv))
