"""vision_msgs as built by the set-up: identical type hashes to upstream 4.1.1, and real DDS traffic."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ament_index_python.packages import get_package_share_directory
from conftest import ros_env

# Upstream vision_msgs 4.1.1 built with the same Jazzy wheels (issue 2): interoperability with a
# robot that has the apt package depends on these being identical.
UPSTREAM_RIHS01 = {
    "Detection2DArray": "214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968",
    "Detection2D": "0d12b69df5c593b3455b7346fac8205437a7d4bcb09b9e0e0b2dde787ded38ea",
    "BoundingBox2D": "008eacbb0cf8f26e83795547bed013eec3675485ef386ec056d80eaaf1c1ce2f",
    "Pose2D": "b0b5d1d7b4c20dd4fcde3ed1d4b289a919290572007d67a97043814db25d3648",
    "Point2D": "eab0e83f44ab4de92ceaf76dd7d0e7638f2bdd1d16ffbe16c7a136c48e407247",
    "ObjectHypothesisWithPose": "41c12344c0396c48b81df12467c192d99b2a0eb1463c5c37194e4223251c80bc",
    "ObjectHypothesis": "51da43cec11c01957a64d1e05a24acd18aae7745ec30b74348ad5f6d634f7f90",
    "LabelInfo": "3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783",
    "VisionClass": "1e4a11f0fed50b5623cb8ff26ca0e37952a48a9c074d16f804b44e9164c2037a",
    "VisionInfo": "95d3116a17484ad91c9a2686e1d54890bbfc3ff6c6a2de137738c4950d45d284",
    "BoundingBox2DArray": "2464e82838009386d371b523211c21c91d74d313fcdd6788223c531d621cf691",
    "Classification": "f74db28d0eaef3afb78f48bf2161cd709a1383a0309d3454383b25be11345143",
    "BoundingBox3D": "bbb73a65c163d7f9bb29009c7bde9f7faa576bd2d23299c4511d19230dab4698",
    "BoundingBox3DArray": "a81938db9576b10c2eecd7c5a5da3eac496efd00221b25ed051dfbc81fb56da6",
    "Detection3D": "ddd703be132ab0b69d33121f1bb034132bfbb3b0ac5f9fb1516005ba1c8a265b",
    "Detection3DArray": "793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018",
}


@pytest.mark.parametrize("type_name", sorted(UPSTREAM_RIHS01))
def test_type_hash_matches_upstream(type_name):
    share = Path(get_package_share_directory("vision_msgs"))
    description = json.loads((share / "msg" / f"{type_name}.json").read_text())
    hashes = {entry["type_name"]: entry["hash_string"] for entry in description["type_hashes"]}
    assert hashes[f"vision_msgs/msg/{type_name}"] == "RIHS01_" + UPSTREAM_RIHS01[type_name]


def test_every_built_message_is_checked():
    share = Path(get_package_share_directory("vision_msgs"))
    built = {p.stem for p in (share / "msg").glob("*.msg")}
    assert built == set(UPSTREAM_RIHS01)


PUBLISHER = textwrap.dedent(
    """
    import sys, rclpy
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy, QoSDurabilityPolicy
    from vision_msgs.msg import Detection2DArray, Detection2D, ObjectHypothesisWithPose
    rclpy.init()
    node = rclpy.create_node("vision_msgs_publisher")
    qos = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE,
                     durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    pub = node.create_publisher(Detection2DArray, "exchange_test", qos)
    msg = Detection2DArray()
    msg.header.frame_id = "camera_link"
    msg.header.stamp.sec = 1234
    det = Detection2D()
    det.bbox.center.position.x = 320.5
    det.bbox.size_x = 40.0
    hyp = ObjectHypothesisWithPose()
    hyp.hypothesis.class_id = "Stop Sign"
    hyp.hypothesis.score = 0.875
    det.results.append(hyp)
    msg.detections.append(det)
    pub.publish(msg)
    print("published", flush=True)
    end = node.get_clock().now().nanoseconds + 20e9
    while rclpy.ok() and node.get_clock().now().nanoseconds < end:
        rclpy.spin_once(node, timeout_sec=0.1)
    """
)


SUBSCRIBER = textwrap.dedent(
    """
    import json, time, rclpy
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy, QoSDurabilityPolicy
    from vision_msgs.msg import Detection2DArray
    rclpy.init()
    node = rclpy.create_node("vision_msgs_subscriber")
    qos = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE,
                     durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    received = []
    node.create_subscription(Detection2DArray, "exchange_test", received.append, qos)
    deadline = time.monotonic() + 20
    while not received and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    if received:
        msg = received[0]
        hypothesis = msg.detections[0].results[0].hypothesis
        print(json.dumps([msg.header.frame_id, msg.header.stamp.sec, hypothesis.class_id, hypothesis.score,
                          msg.detections[0].bbox.center.position.x]))
    """
)


def test_detection2darray_crosses_processes_over_dds():
    """Publisher and subscriber in processes of their own, as two nodes on a robot."""
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER], env=ros_env(), stdout=subprocess.PIPE, text=True)
    try:
        subscriber = subprocess.run(
            [sys.executable, "-c", SUBSCRIBER], env=ros_env(), capture_output=True, text=True, timeout=60
        )
    finally:
        publisher.kill()
        publisher.wait()
    assert subscriber.stdout.strip(), f"no Detection2DArray arrived from the publisher process: {subscriber.stderr}"
    assert json.loads(subscriber.stdout) == ["camera_link", 1234, "Stop Sign", 0.875, 320.5]
