"""The followed target drawn apart from the others (issue 20, item 4), on a real rover frame with two people."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import shared_data

from ssd_ros.control.follow import FollowController, FollowParams
from ssd_ros.evaluation.voc import parse_annotation
from ssd_ros.vision.detections import Detections
from ssd_ros.vision.drawing import FOLLOW_COLORS, OTHER_COLOR, FollowMark, class_color, draw_detections

FRAME = "2019-04-16-100738"  # a rover camera frame with two people ("Person") among signs


@pytest.fixture(scope="module")
def two_people():
    """The frame (RGB) and its two labelled people as tracked detections, ids "3" (left) and "7" (right)."""
    folder = shared_data("picar_camera", "detection", "test")
    rgb = cv2.cvtColor(cv2.imread(str(folder / f"{FRAME}.jpg")), cv2.COLOR_BGR2RGB)
    annotation = parse_annotation(folder / f"{FRAME}.xml")
    boxes = annotation.boxes[[n == "Person" for n in annotation.names]]
    assert len(boxes) == 2
    boxes = boxes[np.argsort(boxes[:, 0])]
    detections = Detections.from_named(boxes, np.array([0.9, 0.8], np.float32), ["Person"] * 2, ["3", "7"])
    return rgb, detections


def _left_edge(drawn: np.ndarray, box: np.ndarray, inset: int = 0) -> tuple[int, ...]:
    """The pixel on the box's left edge (``inset`` px inside it), halfway down."""
    return tuple(drawn[int((box[1] + box[3]) / 2), round(float(box[0])) + inset])


def test_the_followed_box_is_marked_and_the_mark_moves_with_the_target(two_people):
    rgb, detections = two_people
    original = rgb.copy()
    left, right = detections.boxes
    plain = draw_detections(rgb, detections)
    # Without a follower both people get the same class colour: nobody can tell which one is followed.
    assert _left_edge(plain, left) == _left_edge(plain, right) == class_color("Person")

    following_right = draw_detections(rgb, detections, follow=FollowMark("following", "7"))
    assert _left_edge(following_right, right) == FOLLOW_COLORS["following"]
    assert _left_edge(following_right, right, inset=2) == FOLLOW_COLORS["following"]  # thick
    assert _left_edge(following_right, left) == OTHER_COLOR
    assert _left_edge(following_right, left, inset=2) != OTHER_COLOR  # thin
    assert tuple(following_right[1, 1]) == FOLLOW_COLORS["following"]  # the banner names the state
    # The target's id is now the left person's: the mark follows it.
    following_left = draw_detections(rgb, detections, follow=FollowMark("following", "3"))
    assert _left_edge(following_left, left) == FOLLOW_COLORS["following"]
    assert _left_edge(following_left, right) == OTHER_COLOR
    assert np.array_equal(rgb, original)  # the input is not drawn on


def test_a_missing_target_marks_nobody_and_the_banner_says_why(two_people):
    rgb, detections = two_people
    left, right = detections.boxes
    for state in ("lost", "re-acquiring"):
        drawn = draw_detections(rgb, detections, follow=FollowMark(state, "12"))
        assert _left_edge(drawn, left) == _left_edge(drawn, right) == OTHER_COLOR
        assert tuple(drawn[1, 1]) == FOLLOW_COLORS[state]
    searching = draw_detections(rgb, detections, follow=FollowMark("searching", "7"))
    assert tuple(searching[1, 1]) == FOLLOW_COLORS["searching"] != FOLLOW_COLORS["following"]
    assert _left_edge(searching, left) == _left_edge(searching, right) == OTHER_COLOR
    # A longer state text makes a wider banner: "re-acquiring #12" is wider than "searching".
    banner_row = 1
    widths = {
        state: int(
            (
                np.all(
                    draw_detections(rgb, Detections.empty(), follow=mark)[banner_row] == FOLLOW_COLORS[state], axis=1
                )
            ).sum()
        )
        for state, mark in (("searching", FollowMark("searching")), ("re-acquiring", FollowMark("re-acquiring", "12")))
    }
    assert widths["re-acquiring"] > widths["searching"] > 0


def test_follow_mark_text_and_states():
    assert FollowMark("following", "7").text == "following #7"
    assert FollowMark("searching").text == "searching"
    assert FollowMark("inactive").text == "inactive"
    # A follower that holds no target marks no box, whatever id it last had.
    assert FollowMark("searching", "7").text == "searching" and FollowMark("searching", "7").target_id == ""
    with pytest.raises(ValueError, match="unknown follower state 'tracking'; one of following, lost"):
        FollowMark("tracking", "7")


def test_the_controllers_status_names_each_phase():
    """following -> lost (braking) -> re-acquiring (only its id) -> searching; disabled. At 20 Hz on made-up time."""
    params = FollowParams(target_classes=("Person",), lost_timeout_s=1.0, reacquire_window_s=3.0)
    controller = FollowController(params)
    boxes = np.array([[200, 100, 300, 400], [400, 120, 460, 300]], np.float32)
    seen = Detections.from_named(boxes, np.array([0.9, 0.9], np.float32), ["Person"] * 2, ["3", "7"])
    assert controller.status == "searching"
    statuses = {}
    for k in range(120):
        now = k * 0.05
        frame = seen if now < 1.0 else None
        controller.update(frame, now if frame else None, now)
        statuses.setdefault(controller.status, now)
        if controller.target is not None:
            assert controller.target.track_id == "3"  # the largest box, kept by its id
    assert list(statuses) == ["following", "lost", "re-acquiring", "searching"]
    assert statuses["lost"] == pytest.approx(1.0 + params.max_detection_age_s, abs=0.06)
    assert statuses["re-acquiring"] == pytest.approx(1.0 + params.lost_timeout_s, abs=0.06)
    assert statuses["searching"] == pytest.approx(1.0 + params.reacquire_window_s, abs=0.06)
    controller.set_enabled(False)
    controller.update(None, None, 6.0)
    assert controller.status == "disabled"
