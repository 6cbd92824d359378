"""Tracker (ssd_ros.control.tracking) on scripted box sequences: ids kept, born, lost and never swapped."""

import time

import numpy as np
import pytest

from ssd_ros.control.tracking import IdSwitchCounter, Tracker, TrackerParams, greedy_match, match_truth
from ssd_ros.vision.detections import Detections, iou_matrix, similar_size

PERIOD = 0.1  # 10 Hz frames


def box(cx, cy, w=60.0, h=160.0):
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def frame(*items):
    """Detections from (box, score[, name]) tuples."""
    if not items:
        return Detections.empty(("person",))
    boxes = [i[0] for i in items]
    scores = [i[1] for i in items]
    names = [i[2] if len(i) > 2 else "person" for i in items]
    return Detections.from_named(np.array(boxes), np.array(scores), names)


def run(tracker, frames, start=0):
    """Track each frame at 10 Hz; the list of each frame's ids."""
    return [list(tracker.update(f, (start + k) * PERIOD).track_ids) for k, f in enumerate(frames)]


def test_constant_velocity_object_keeps_one_id_from_confirmation_on():
    # 12 px per frame = 120 px/s: with 60 px wide boxes, consecutive boxes overlap (IoU 0.67) but frames
    # two apart barely (0.43): prediction is what keeps it.
    ids = run(Tracker(), [frame((box(100 + 12 * k, 240), 0.9)) for k in range(30)])
    assert ids[0] == [""]  # tentative until track_min_hits (2)
    assert all(i == ["1"] for i in ids[1:])


def test_velocity_prediction_bridges_a_jump_iou_alone_would_miss():
    tracker = Tracker()
    run(tracker, [frame((box(100 + 30 * k, 240), 0.9)) for k in range(10)])
    # Three missing frames at 300 px/s: the object is 120 px further, no overlap with its last box.
    last = box(100 + 30 * 9, 240)
    predicted = box(100 + 30 * 13, 240)
    assert iou_matrix(np.array([last]), np.array([predicted]))[0, 0] == 0.0
    for k in range(10, 13):
        tracker.update(frame(), k * PERIOD)
    assert tracker.update(frame((predicted, 0.9)), 13 * PERIOD).track_ids == ("1",)


def test_a_frame_delivered_late_gets_ids_and_leaves_the_tracks_as_they_were():
    tracker = Tracker()
    run(tracker, [frame((box(100 + 30 * k, 240), 0.9)) for k in range(10)])
    # Frame 8 again, after frame 9: its id, but its past box must not drag the track back and cut its velocity ...
    late = frame((box(100 + 30 * 8, 240), 0.9))
    assert tracker.update(late, 8 * PERIOD).track_ids == ("1",)
    # ... which the prediction needs to bridge three missed frames at 300 px/s, as without the late frame.
    for k in range(10, 13):
        tracker.update(frame(), k * PERIOD)
    assert tracker.update(frame((box(100 + 30 * 13, 240), 0.9)), 13 * PERIOD).track_ids == ("1",)


def test_id_kept_through_missed_frames_up_to_max_age_then_new_id():
    params = TrackerParams(track_max_age_s=1.0)
    tracker = Tracker(params)
    run(tracker, [frame((box(300, 240), 0.9)) for _ in range(5)])
    # Gone for 9 frames (0.9 s < max age): same id when it comes back.
    for k in range(5, 14):
        assert tracker.update(frame(), k * PERIOD).track_ids == ()
    assert tracker.update(frame((box(300, 240), 0.9)), 14 * PERIOD).track_ids == ("1",)
    # Gone for 1.2 s: the track was deleted; the object is a new track with a new id (never "1" again).
    for k in range(15, 27):
        tracker.update(frame(), k * PERIOD)
    assert tracker.update(frame((box(300, 240), 0.9)), 27 * PERIOD).track_ids == ("",)
    assert tracker.update(frame((box(300, 240), 0.9)), 28 * PERIOD).track_ids == ("2",)


def test_two_objects_crossing_keep_their_ids():
    # A walks right, B walks left at the same depth and size; they overlap fully mid-way (frame 15).
    tracker = Tracker()
    a_ids, b_ids = [], []
    for k in range(31):
        a, b = box(100 + 20 * k, 240), box(700 - 20 * k, 240)
        tracked = tracker.update(frame((a, 0.9), (b, 0.8)), k * PERIOD).track_ids
        a_ids.append(tracked[0])
        b_ids.append(tracked[1])
    assert set(a_ids[1:]) == {"1"} and set(b_ids[1:]) == {"2"}


def test_size_gate_needs_width_and_height_both_within_the_ratio():
    ref = np.array([box(300, 240)])  # 60 x 160
    others = np.array(
        [
            box(300, 240, 85, 110),  # 1.42x wider, 1.45x shorter: both within 1.5
            box(300, 240, 60, 100),  # clipped at the top: the height alone is another object's
            box(300, 240, 100, 160),  # the width alone
            box(300, 240, 0, 160),  # empty
            box(300, 240, -60, -160),  # inverted
            [np.nan, 0, 60, 160],
        ]
    )
    assert similar_size(ref, others, 1.5).tolist() == [[True, False, False, False, False, False]]
    assert similar_size(others[:1], ref, 1.5).tolist() == [[True]]  # symmetric
    assert similar_size(others[4:5], others[4:5], 1.5).tolist() == [[False]]  # inverted boxes are of no size


def test_nearer_person_appearing_in_front_does_not_take_the_farther_ones_id():
    # A stands far (160 px tall); B, nearer (2.2x bigger), steps out right in front of it, hiding it (A is not
    # detected). B's box covers A's (IoU 0.21, above track_match_iou): only the size gate tells them apart.
    tracker = Tracker()
    a = box(320, 240)
    run(tracker, [frame((a, 0.9)) for _ in range(5)])
    ids_b = []
    for k in range(5, 20):
        b = box(320 + 30 * (k - 5), 240, 132, 352)
        hidden = abs((b[0] + b[2]) / 2 - 320) < 90
        items = [(b, 0.9)] if hidden else [(a, 0.9), (b, 0.9)]
        tracked = tracker.update(frame(*items), k * PERIOD).track_ids
        ids_b.append(tracked[0] if hidden else tracked[1])
        if not hidden:
            assert tracked[0] == "1"
    assert "1" not in ids_b and ids_b[-1] == "2"


def test_low_score_detections_extend_a_track_but_never_start_one():
    tracker = Tracker()
    run(tracker, [frame((box(300 + 5 * k, 240), 0.9)) for k in range(5)])
    # Partly hidden: score 0.3 (between low 0.1 and high 0.5) keeps the id ...
    assert tracker.update(frame((box(325, 240), 0.3)), 5 * PERIOD).track_ids == ("1",)
    # ... while a low-score detection elsewhere starts nothing, and one below track_low_score is ignored.
    for k in range(6, 10):
        tracked = tracker.update(
            frame((box(300 + 5 * k, 240), 0.9), (box(600, 100), 0.3), (box(50, 100), 0.05)), k * PERIOD
        )
        assert tracked.track_ids == ("1", "", "")


def test_classes_are_tracked_apart_and_bad_boxes_get_no_id():
    tracker = Tracker()
    same_place = box(300, 240)
    for k in range(4):
        items = [
            (same_place, 0.9, "person"),
            (same_place, 0.9, "dog"),
            ([np.nan, 0, 10, 10], 0.9),
            ([50, 50, 40, 60], 0.9),
        ]
        tracked = tracker.update(frame(*items), k * PERIOD)
    assert tracked.track_ids[:2] in {("1", "2"), ("2", "1")} and tracked.track_ids[2:] == ("", "")


def test_a_false_positive_seen_once_burns_no_id():
    tracker = Tracker()
    tracker.update(frame((box(500, 100), 0.9)), 0.0)  # a flash, gone next frame
    ids = run(tracker, [frame((box(200, 240), 0.9)) for _ in range(3)], start=1)
    assert ids[-1] == ["1"]


def test_same_input_sequence_gives_the_same_ids():
    rng = np.random.default_rng(7)
    frames = []
    for k in range(60):
        n = rng.integers(0, 12)
        centres = rng.uniform(50, 600, (n, 2))
        boxes = [box(x + 3 * k, y, 40, 90) for x, y in centres]
        frames.append(frame(*[(b, float(s)) for b, s in zip(boxes, rng.uniform(0.05, 1.0, n))]))
    assert run(Tracker(), frames) == run(Tracker(), frames)


def test_parameters_are_validated():
    with pytest.raises(ValueError, match="track_low_score"):
        Tracker(TrackerParams(track_low_score=0.6, track_high_score=0.5))
    with pytest.raises(ValueError, match="track_min_hits"):
        TrackerParams(track_min_hits=0)


def test_greedy_match_takes_the_best_pairs_first_and_breaks_ties_by_index():
    score = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert greedy_match(score, 0.2) == [(0, 0)]  # row 1's only pair above 0.2 uses column 0
    assert greedy_match(np.array([[0.5, 0.5], [0.5, 0.5]]), 0.2) == [(0, 0), (1, 1)]


def test_cost_grows_far_less_than_the_pairs_of_detections_and_tracks():
    # The < 2 ms target on one core is measured in benchmarks/bench_tracking.py. This catches a Python loop over
    # track x detection pairs (10x the objects = 100x the pairs): it compares 100 objects with 10, timed the
    # same way in the same test (best of several runs), so machine load cancels out instead of a fixed bound.
    rng = np.random.default_rng(0)

    def fastest_update(count: int) -> float:
        centres = rng.uniform(0, 1200, (count, 2))
        best = float("inf")
        for _ in range(5):
            tracker = Tracker()
            for k in range(5):
                tracker.update(frame(*[(box(x + 2 * k, y, 30, 70), 0.9) for x, y in centres]), k * PERIOD)
            detections = frame(*[(box(x + 10, y, 30, 70), 0.9) for x, y in centres])
            start = time.perf_counter()
            tracked = tracker.update(detections, 5 * PERIOD)
            best = min(best, time.perf_counter() - start)
            assert sum(1 for i in tracked.track_ids if i) == count
        return best

    few, many = fastest_update(10), fastest_update(100)
    assert many < 30 * few, f"100 objects took {many * 1e3:.2f} ms, 10 took {few * 1e3:.2f} ms"


def test_id_switches_against_ground_truth_count_changes_of_a_true_objects_track_id():
    counter = IdSwitchCounter()
    counter.add([("a", "1"), ("b", "2")])
    counter.add([("a", ""), ("b", "2")])  # a untracked in this frame: no switch
    counter.add([("a", "1")])
    counter.add([("a", "3"), ("b", "1")])  # a switched to 3, b took a's old id: two switches
    counter.add([("a", "1")])  # back to its old id: counts again
    assert counter.switches == 3 and counter.matched == 7


def test_ground_truth_is_matched_to_detections_by_iou():
    truth = np.array([box(100, 240), box(400, 240)])
    found = np.array([box(405, 240), box(600, 240), box(98, 240)])
    assert sorted(match_truth(truth, found)) == [(0, 2), (1, 0)]
    assert match_truth(truth, np.zeros((0, 4))) == []


def test_a_persons_track_never_continues_on_a_dogs_box():
    """The class gate: a dog where the person was (the person left, a dog walked in) is another track."""
    tracker = Tracker()
    run(tracker, [frame((box(300 + 5 * k, 240), 0.9, "person")) for k in range(5)])
    dog = [frame((box(325 + 5 * k, 240), 0.9, "dog")) for k in range(3)]
    assert run(tracker, dog, start=5) == [[""], ["2"], ["2"]]
    assert tracker.state("1") == "lost"


def test_a_lost_track_is_re_activated_under_its_old_id_and_removed_after_its_max_age():
    tracker = Tracker(TrackerParams(track_max_age_s=1.0))
    run(tracker, [frame((box(300, 240), 0.9)) for _ in range(3)])
    assert tracker.state("1") == "tracked"
    tracker.update(frame(), 3 * PERIOD)
    assert tracker.state("1") == "lost"
    assert tracker.update(frame((box(302, 240), 0.9)), 4 * PERIOD).track_ids == ("1",)
    assert tracker.state("1") == "tracked"
    for k in range(5, 16):  # 1.1 s unseen
        tracker.update(frame(), k * PERIOD)
    assert tracker.state("1") == "removed" and tracker.state("2") is None and tracker.state("person") is None


def test_a_lost_track_is_recovered_where_it_was_last_seen_after_its_prediction_drifted():
    """Observation-centric recovery: it walked fast, stopped behind something and stepped out where it stopped."""
    tracker = Tracker()
    run(tracker, [frame((box(100 + 20 * k, 240), 0.9)) for k in range(8)])
    last = box(100 + 20 * 7, 240)
    for k in range(8, 23):  # hidden 1.5 s: the prediction walked on 300 px
        tracker.update(frame(), k * PERIOD)
    assert tracker.update(frame((last, 0.9)), 23 * PERIOD).track_ids == ("1",)


def test_when_the_clock_goes_back_the_old_tracks_are_removed_and_their_ids_never_given_again():
    """A looping bag replay or a restarted simulator: stamps restart far below the newest one seen."""
    tracker = Tracker(TrackerParams(track_max_age_s=1.0))
    run(tracker, [frame((box(300, 240), 0.9)) for _ in range(5)], start=1000)
    # A frame a little out of order is still the same timeline: the track goes on.
    assert tracker.update(frame((box(300, 240), 0.9)), 1000 * PERIOD).track_ids == ("1",)
    # The clock restarts at 0 and the person has left: its track is removed (ages count from the newest stamp, so
    # otherwise it would stay lost until the stamps passed the old ones), and the next person there is a new one.
    run(tracker, [frame() for _ in range(12)])
    assert tracker.state("1") == "removed"
    assert run(tracker, [frame((box(300, 240), 0.9)) for _ in range(2)], start=12) == [[""], ["2"]]
