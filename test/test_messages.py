"""Detection2DArray -> Detections: what a malformed message from another node may not smuggle in."""

import math

import pytest
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

from ssd_ros.ros.messages import msg_to_detections


def _detection(cx=320.0, cy=240.0, w=40.0, h=120.0, score=0.9, class_id="person") -> Detection2D:
    det = Detection2D()
    det.bbox.center.position.x, det.bbox.center.position.y = cx, cy
    det.bbox.size_x, det.bbox.size_y = w, h
    hypothesis = ObjectHypothesisWithPose()
    hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = class_id, score
    det.results = [hypothesis]
    return det


def test_a_valid_detection_becomes_corner_boxes():
    got = msg_to_detections(Detection2DArray(detections=[_detection()]))
    assert got.boxes.tolist() == [[300.0, 180.0, 340.0, 300.0]] and got.names == ["person"]
    assert got.scores.tolist() == pytest.approx([0.9])


@pytest.mark.parametrize(
    "bad",
    [
        {"cx": math.nan},
        {"w": math.inf},
        {"h": -1.0},
        {"score": 5.0},  # a certainty above 1 must not win the target selection
        {"score": -0.1},
        {"cx": 1e300},  # finite, but inf once stored as float32
    ],
)
def test_malformed_detections_are_dropped(bad):
    msg = Detection2DArray(detections=[_detection(**bad), _detection(class_id="dog")])
    assert msg_to_detections(msg).names == ["dog"]
