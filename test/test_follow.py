"""FollowController: closed-loop behaviour in the core simulator and the safety rules, without ROS."""

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest

from ssd_ros.control import follow
from ssd_ros.control.camera import PinholeCamera
from ssd_ros.control.follow import OWN_ID_PREFIX, ZERO, FollowController, FollowLoop, FollowParams, class_mismatch
from ssd_ros.control.geometry import PERSON_HEIGHT_M
from ssd_ros.control.tracking import TrackerParams
from ssd_ros.settings import settings_from_mapping
from ssd_ros.simulation.simulator import (
    SWAPS,
    RoverState,
    SimParams,
    Simulator,
    bearing_and_distance,
    desired_distance_m,
    follow_outcome,
    make_scenario,
    path_metrics,
    run_closed_loop,
    steering_sign_changes,
)
from ssd_ros.vision.detections import Detections

PARAMS = FollowParams()
SIM = SimParams()
DESIRED = desired_distance_m(PERSON_HEIGHT_M, PARAMS.desired_height_fraction, SIM)
PERIOD = 1.0 / 20.0


def column_of(camera: PinholeCamera, bearing_rad: float) -> float:
    """The column where a distortion-free camera sees a point at ``bearing_rad`` (positive = left)."""
    return camera.project(math.cos(bearing_rad), math.sin(bearing_rad), 0.0)[0]


def person_box(bearing_deg: float, height_fraction: float, p: FollowParams = PARAMS) -> list[float]:
    """A person-shaped box at a bearing (positive = left) filling ``height_fraction`` of the image."""
    cx = column_of(p.camera, math.radians(bearing_deg))
    h = height_fraction * p.image_height
    return [cx - 0.15 * h, 240 - h / 2, cx + 0.15 * h, 240 + h / 2]


def untracked(*items) -> Detections:
    """Detections without track ids from (box, score, name) tuples."""
    if not items:
        return Detections.empty(("person",))
    boxes, scores, names = zip(*items)
    return Detections.from_named(np.array(boxes), np.array(scores), list(names))


def frame(*items) -> Detections:
    """Detections from (box, score, name) tuples, tracked: the k-th one has track id str(k + 1) in every frame."""
    detections = untracked(*items)
    return replace(detections, track_ids=tuple(str(k + 1) for k in range(len(detections))))


def assert_ackermann(linear, angular, p: FollowParams = PARAMS):
    """No spin in place; no yaw rate tighter than the minimum turning radius."""
    for v, w in zip(linear, angular):
        assert math.isfinite(v) and math.isfinite(w)
        assert abs(w) <= abs(v) * math.tan(math.radians(p.max_steering_deg)) / p.wheelbase_m + 1e-9
        if v == 0.0:
            assert w == 0.0


def run(name, duration=None, seed=0, params=PARAMS, sim_params=SIM, on_tick=None):
    scenario = make_scenario(name, DESIRED, sim_params)
    sim = Simulator(sim_params, scenario, seed=seed)
    loop = FollowLoop(params)
    trace = run_closed_loop(loop, sim, duration or scenario.duration_s)
    return trace, sim, loop.controller


def test_static_target_25deg_off_axis_at_twice_the_distance_converges_without_oscillation():
    trace, _, _ = run("static", duration=30.0)
    assert math.degrees(trace.bearing[0]) == pytest.approx(25.0, abs=0.5)
    assert trace.distance[0] / DESIRED == pytest.approx(2.0, abs=0.01)
    metrics = path_metrics(trace, DESIRED)
    # Settled = bearing within 3 deg and distance within 10 % from then to the end of the run.
    assert metrics.settle_time_s <= 20.0
    assert metrics.steering_sign_changes <= 2
    assert metrics.distance_overshoot < 0.05
    assert_ackermann(trace.linear, trace.angular)
    assert max(trace.linear[-40:]) < 0.02  # arrived: (nearly) still instead of hunting


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_convergence_holds_with_other_noise_seeds_and_more_latency(seed):
    trace, _, _ = run("static", duration=30.0, seed=seed, sim_params=SimParams(latency_s=0.25, detection_rate_hz=6))
    metrics = path_metrics(trace, DESIRED)
    assert metrics.settle_time_s <= 25.0
    assert metrics.steering_sign_changes <= 3


@pytest.mark.parametrize("how", ["target_removed", "detector_silent"])
def test_no_target_reaches_exact_zero_within_lost_timeout_plus_one_period(how):
    sim = Simulator(SIM, make_scenario("static", DESIRED, SIM), seed=0)
    loop = FollowLoop(PARAMS)
    controller = loop.controller
    run_closed_loop(loop, sim, 3.0, control_rate_hz=1.0 / PERIOD)
    assert controller.state == "tracking" and controller.last_command.linear_mps > 0.2
    removed_at = sim.time
    if how == "target_removed":
        sim.targets[0].visible = False
    else:
        sim.detections_enabled = False
    # The world changed mid-run: the same closed loop continues from here.
    after = run_closed_loop(loop, sim, removed_at + 3.0, control_rate_hz=1.0 / PERIOD)
    deadline = removed_at + PARAMS.lost_timeout_s + PERIOD
    late = [(v, w) for t, v, w in zip(after.t, after.linear, after.angular) if t >= deadline]
    assert late and all(v == 0.0 and w == 0.0 for v, w in late)
    # Braking starts well before the hard stop, and the speed never grows once the target is gone.
    assert all(b <= a + 1e-6 for a, b in zip(after.linear, after.linear[1:]))
    assert after.state[-1] == "searching"


def test_disabled_gives_zero_and_forgets_target():
    controller = FollowController(PARAMS)
    far = frame((person_box(10, 0.25), 0.9, "person"))
    for k in range(10):
        command = controller.update(far, k * PERIOD, k * PERIOD)
    assert command.linear_mps > 0 and controller.state == "tracking"
    controller.set_enabled(False)
    for k in range(10, 20):
        command = controller.update(far, k * PERIOD, k * PERIOD)
        assert command.linear_mps == 0.0 and command.angular_radps == 0.0
        assert controller.state == "disabled"
    assert controller.target is None
    controller.set_enabled(True)
    controller.update(far, 20 * PERIOD, 20 * PERIOD)
    assert controller.state == "tracking"


def test_stale_and_future_detections_are_ignored():
    controller = FollowController(PARAMS)
    far = frame((person_box(0, 0.25), 0.9, "person"))
    for k in range(20):
        now = 100.0 + k * PERIOD
        old = controller.update(far, now - PARAMS.max_detection_age_s - 0.2, now)
        assert old.linear_mps == 0.0 and controller.state == "searching"
        future = controller.update(far, now + PARAMS.max_detection_age_s + 0.2, now)
        assert future.linear_mps == 0.0
    assert controller.counters["stale_frames"] == 40 and controller.counters["frames"] == 0
    assert controller.update(far, 102.0, 102.0 + 0.1).linear_mps > 0  # a fresh frame is used at once


def test_a_clock_that_goes_back_stops_the_rover_and_the_new_timeline_is_followed():
    # A looping bag replay or a restarted simulator sets the clock back: the last sighting's stamp then lies in the
    # future, and must neither be steered on as fresh nor make every new frame look older than the last one.
    controller = FollowController(PARAMS)
    left = frame((person_box(10, 0.25), 0.9, "person"))
    for k in range(20):
        now = 100.0 + k * PERIOD
        command = controller.update(left, now, now)
    assert command.linear_mps > 0 and command.angular_radps > 0 and controller.state == "tracking"
    command = controller.update(None, None, 0.0)
    assert command == ZERO and controller.state == "searching"
    right = frame((person_box(-10, 0.25), 0.9, "person"))
    for k in range(1, 20):
        command = controller.update(right, k * PERIOD, k * PERIOD)
    assert command.linear_mps > 0 and command.angular_radps < 0 and controller.counters["stale_frames"] == 0
    # A step back smaller than max_detection_age_s (an NTP correction) is no new timeline: the target is kept.
    now = 19 * PERIOD - PARAMS.max_detection_age_s / 2
    command = controller.update(right, now, now)
    assert command.linear_mps > 0 and command.angular_radps < 0 and controller.state == "tracking"


def test_nan_boxes_foreign_classes_and_low_scores_never_become_the_target():
    controller = FollowController(PARAMS)
    junk = frame(
        ([np.nan, 10, 100, 300], 0.9, "person"),
        ([0, 0, np.inf, 400], 0.9, "person"),
        ([100, 100, 50, 300], 0.9, "person"),  # x_max < x_min
        ([100, 0, 600, 480], 0.99, "dog"),
        (person_box(-20, 0.2), 0.3, "person"),  # below min_score
    )
    for k in range(20):
        command = controller.update(junk, k * PERIOD, k * PERIOD)
        assert command.linear_mps == 0.0 and command.angular_radps == 0.0
    assert controller.target is None and controller.counters["rejected_candidates"] == 5 * 20
    # Mixed with a real person, only the person is followed (it is to the left: positive yaw rate).
    person = (person_box(15, 0.25), 0.8, "person")
    mixed = frame(*[(b, s, n) for b, s, n in zip(junk.boxes, junk.scores, junk.names)], person)
    for k in range(20, 40):
        command = controller.update(mixed, k * PERIOD, k * PERIOD)
        assert math.isfinite(command.linear_mps) and math.isfinite(command.angular_radps)
    assert controller.target.class_name == "person"
    assert command.linear_mps > 0 and command.angular_radps > 0


def test_garbage_inputs_never_give_non_finite_commands():
    rng = np.random.default_rng(0)
    controller = FollowController(PARAMS)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -1e30, 1e30, 1e-30])
    for k in range(300):
        n = int(rng.integers(0, 4))
        boxes = rng.uniform(-100, 800, (n, 4))
        boxes[rng.random((n, 4)) < 0.2] = rng.choice(specials, int((rng.random((n, 4)) < 0.2).sum()) or 1)[0]
        scores = rng.choice([0.9, np.nan, 1.0, 0.6], n)
        dets = Detections(boxes.astype(np.float32), scores.astype(np.float32), np.zeros(n, np.int64), ("person",))
        stamp = rng.choice([k * PERIOD, np.nan, np.inf, None])
        command = controller.update(dets if rng.random() < 0.8 else None, stamp, k * PERIOD)
        assert math.isfinite(command.linear_mps) and math.isfinite(command.angular_radps)
        assert abs(command.linear_mps) <= PARAMS.max_linear_mps + 1e-9
    assert_ackermann([controller.last_command.linear_mps], [controller.last_command.angular_radps])


def test_keeps_the_acquired_person_when_another_crosses_in_front():
    trace, sim, controller = run("two_people")
    b_positions = [targets[1] for targets in trace.targets]
    to_b = [bearing_and_distance(RoverState(x, y, yaw), b, SIM) for (x, y, yaw), b in zip(trace.rover, b_positions)]
    # B is in view, nearer (a bigger box) and partly occluding A during the crossing ...
    crossing = [i for i, (bearing, _) in enumerate(to_b) if abs(bearing) < math.radians(5)]
    assert crossing, "the scenario must make B pass in front of A"
    assert all(d < trace.distance[i] for i, (_, d) in enumerate(to_b) if i in crossing)
    # ... and ends in view on the other side, yet the rover keeps facing A.
    assert abs(to_b[-1][0]) < math.radians(PARAMS.camera_hfov_deg / 2)
    assert max(abs(math.degrees(b)) for b in trace.bearing) < 3.0
    assert abs(trace.distance[-1] / DESIRED - 1) < 0.10
    assert controller.state == "tracking"


def tracked(*items):
    """Detections with track ids from (box, score, name, id) tuples."""
    boxes, scores, names, ids = zip(*items)
    return Detections.from_named(np.array(boxes), np.array(scores), list(names), ids)


def test_detections_without_a_track_id_are_never_followed():
    controller = FollowController(PARAMS)
    for k in range(10):
        command = controller.update(untracked((person_box(10, 0.25), 0.9, "person")), k * PERIOD, k * PERIOD)
        assert command == ZERO and controller.target is None
    assert controller.counters["untracked_candidates"] == 10 and controller.counters["rejected_candidates"] == 0


def test_the_target_is_its_track_id_not_the_biggest_or_nearest_box():
    controller = FollowController(PARAMS)
    controller.update(tracked((person_box(0, 0.4), 0.8, "person", "7")), 0.0, 0.0)
    assert controller.target.track_id == "7"
    # "7" walks on a little; "8", bigger and better scoring, steps in where "7" was: the id wins.
    a_moved, b = person_box(1, 0.41), person_box(0, 0.5)
    controller.update(tracked((b, 0.99, "person", "8"), (a_moved, 0.8, "person", "7")), PERIOD, PERIOD)
    assert controller.target.track_id == "7" and controller.target.box[0] == pytest.approx(a_moved[0], abs=1e-3)
    # With "7" hidden, "8" is not taken for it: its id is waited for (the tracker keeps lost tracks' ids) ...
    t = PERIOD
    while t < PARAMS.reacquire_window_s - PERIOD:
        t += PERIOD
        command = controller.update(tracked((b, 0.99, "person", "8")), t, t)
        assert controller.target.track_id == "7" and controller.target.stamp_s == PERIOD
    assert command == ZERO and controller.state == "searching"
    # ... and "7" back under its id, after the robot stopped, is the target again.
    t += PERIOD
    controller.update(tracked((b, 0.99, "person", "8"), (person_box(1.5, 0.41), 0.8, "person", "7")), t, t)
    assert controller.target.stamp_s == t and controller.target.track_id == "7"
    # Once reacquire_window_s is over without it, any candidate may be acquired: the biggest, "8".
    for _ in range(int(PARAMS.reacquire_window_s / PERIOD) + 2):
        t += PERIOD
        controller.update(tracked((b, 0.99, "person", "8")), t, t)
    assert controller.target.track_id == "8"


def cross_and_swap(controller, frames=14, swap_frame=6, a_hidden=()):
    """A (id "1", followed) walks right, B (id "2", nearer: 1.25x bigger) left; from ``swap_frame`` on the tracker
    has swapped their ids. Yields, per frame, A's and B's boxes after the controller saw the frame."""
    controller.update(tracked((person_box(-8, 0.35), 0.9, "person", "1")), -PERIOD, -PERIOD)
    for k in range(frames):
        a, b = person_box(-8 + 0.9 * k, 0.35), person_box(10 - 1.1 * k, 0.35 * 1.25)
        a_id, b_id = ("1", "2") if k < swap_frame else ("2", "1")
        items = [(b, 0.9, "person", b_id)] + ([] if k in a_hidden else [(a, 0.9, "person", a_id)])
        controller.update(tracked(*items), k * PERIOD, k * PERIOD)
        yield np.float32(a), np.float32(b)


def test_when_the_tracker_swaps_two_crossing_peoples_ids_the_follower_keeps_its_person():
    controller = FollowController(PARAMS)
    for _a, b in cross_and_swap(controller):
        assert not np.array_equal(controller.target.box, b)
    a = _a
    # Its id "1" jumped onto B: dropped; A, now "2", is where A was going.
    assert controller.target.track_id == "2" and np.array_equal(controller.target.box, a)
    assert controller.target.dropped_ids == {"1"} and controller.counters["id_jumps"] == 1


def test_a_swap_while_the_person_is_hidden_waits_for_it_and_never_takes_the_other():
    controller = FollowController(PARAMS)
    for _a, b in cross_and_swap(controller, a_hidden=(6, 7, 8)):
        assert not np.array_equal(controller.target.box, b)  # "1" on B alone for three frames: never taken
    a = _a
    assert controller.target.track_id == "2" and np.array_equal(controller.target.box, a)
    assert controller.counters["id_jumps"] == 1


def test_without_the_jump_check_the_swap_hands_the_target_to_the_other_person(monkeypatch):
    """The check is what keeps the person: with an infinite gate the follower follows its id onto B."""
    monkeypatch.setattr(follow, "JUMP_CHI2", math.inf)
    controller = FollowController(PARAMS)
    *_, (_, b) = cross_and_swap(controller)
    assert controller.target.track_id == "1" and np.array_equal(controller.target.box, b)


def test_one_implausible_box_is_noise_and_the_id_is_kept():
    controller = FollowController(PARAMS)
    a = person_box(0, 0.4)
    for k in range(10):
        controller.update(tracked((a, 0.9, "person", "1")), k * PERIOD, k * PERIOD)
    controller.update(tracked((person_box(12, 0.4), 0.9, "person", "1")), 10 * PERIOD, 10 * PERIOD)  # one bad box
    assert controller.target.stamp_s == 9 * PERIOD  # not taken ...
    controller.update(tracked((a, 0.9, "person", "1")), 11 * PERIOD, 11 * PERIOD)
    assert controller.target.track_id == "1" and controller.target.stamp_s == 11 * PERIOD  # ... nor the id dropped
    assert controller.counters["id_jumps"] == 0


def test_one_implausible_box_right_after_a_swap_is_noise_and_the_new_id_is_kept():
    controller = FollowController(PARAMS)
    list(cross_and_swap(controller, frames=7))  # the swap at the last frame: A re-found under "2"
    assert controller.target.track_id == "2" and controller.counters["id_jumps"] == 1
    k = 7
    b = person_box(10 - 1.1 * k, 0.35 * 1.25)
    controller.update(
        tracked((b, 0.9, "person", "1"), (person_box(20, 0.35), 0.9, "person", "2")), k * PERIOD, k * PERIOD
    )
    assert controller.target.stamp_s == 6 * PERIOD  # one bad box of "2": not taken, and "2" not dropped ...
    k = 8
    a = person_box(-8 + 0.9 * k, 0.35)
    controller.update(tracked((b, 0.9, "person", "1"), (a, 0.9, "person", "2")), k * PERIOD, k * PERIOD)
    assert controller.target.track_id == "2" and np.array_equal(controller.target.box, np.float32(a))  # ... A is "2"
    assert controller.counters["id_jumps"] == 1


def test_an_id_on_a_box_of_another_size_does_not_switch_the_target():
    """A detector that writes its per-frame index into Detection2D.id: "0" is whichever box comes first."""
    controller = FollowController(PARAMS)
    controller.update(tracked((person_box(0, 0.4), 0.9, "person", "0")), 0.0, 0.0)
    near = person_box(12, 0.9)  # a near person, first in this frame's list
    controller.update(tracked((near, 0.9, "person", "0"), (person_box(0, 0.4), 0.8, "person", "1")), PERIOD, PERIOD)
    assert controller.target.box[3] - controller.target.box[1] == pytest.approx(0.4 * 480, abs=1e-3)


def test_frames_without_ids_are_tracked_by_the_loop_in_its_own_id_space():
    loop = FollowLoop(PARAMS)
    for k in range(3):
        out = loop.offer(untracked((person_box(0, 0.4), 0.9, "person")), k * PERIOD)
        loop.tick(k * PERIOD)
    assert out.track_ids == (OWN_ID_PREFIX + "1",) and loop.controller.target.track_id == OWN_ID_PREFIX + "1"
    # Ids from the detector are used as they are; its frames without any (only unconfirmed detections) get the
    # loop's own, which can never be taken for the detector's "1".
    assert loop.offer(tracked((person_box(0, 0.4), 0.9, "person", "1")), 3 * PERIOD).track_ids == ("1",)
    assert loop.offer(untracked((person_box(0, 0.4), 0.9, "person")), 4 * PERIOD).track_ids[0].startswith(OWN_ID_PREFIX)


def test_frames_without_ids_or_stamps_age_the_loops_tracks_on_its_clock():
    loop = FollowLoop(PARAMS)
    person = untracked((person_box(0, 0.3), 0.9, "person"))
    for k in range(10):
        loop.offer(person, None)  # no stamp: taken now
        loop.tick(k * PERIOD)
    assert loop.controller.target.track_id == OWN_ID_PREFIX + "1"
    for k in range(10, 10 + round(2 * TrackerParams().track_max_age_s / PERIOD)):  # nobody, for twice the max age
        loop.offer(untracked(), None)
        loop.tick(k * PERIOD)
    assert loop.tracker.state("1") == "removed"


def test_never_turns_in_place_and_stops_when_too_close():
    controller = FollowController(PARAMS)
    # 25 deg off-axis but already closer than the creep limit: must not rotate without moving.
    close = frame((person_box(25, 0.7), 0.9, "person"))
    for k in range(40):
        command = controller.update(close, k * PERIOD, k * PERIOD)
        assert command.linear_mps == 0.0 and command.angular_radps == 0.0
    # Reversing only when allowed.
    reverse = FollowController(settings_from_mapping(FollowParams, {"allow_reverse": True}))
    for k in range(40):
        command = reverse.update(close, k * PERIOD, k * PERIOD)
    assert -PARAMS.max_reverse_mps <= command.linear_mps < -0.05
    assert_ackermann([command.linear_mps], [command.angular_radps])


def test_off_axis_at_the_desired_distance_creeps_on_an_arc_towards_the_target():
    controller = FollowController(PARAMS)
    side = frame((person_box(-20, PARAMS.desired_height_fraction), 0.9, "person"))
    linear, angular = [], []
    for k in range(40):
        command = controller.update(side, k * PERIOD, k * PERIOD)
        linear.append(command.linear_mps)
        angular.append(command.angular_radps)
    assert 0 < linear[-1] <= PARAMS.turn_creep_mps + 1e-9
    assert angular[-1] < 0  # target on the right: turn right
    assert_ackermann(linear, angular)


def test_acceleration_and_steering_rate_limits():
    controller = FollowController(PARAMS)
    far_left = frame((person_box(25, 0.1), 0.9, "person"))
    previous_v, previous_steer = 0.0, 0.0
    steers = []
    for k in range(60):
        command = controller.update(far_left, k * PERIOD, k * PERIOD)
        assert command.linear_mps - previous_v <= PARAMS.max_linear_accel_mps2 * PERIOD + 1e-9
        max_step = math.radians(PARAMS.max_steering_rate_degps) * PERIOD
        assert abs(controller.steering_rad - previous_steer) <= max_step + 1e-9
        previous_v, previous_steer = command.linear_mps, controller.steering_rad
        steers.append(controller.steering_rad)
    assert command.linear_mps == pytest.approx(PARAMS.max_linear_mps)
    assert steering_sign_changes(steers) == 0


def test_from_reverse_to_forward_the_forward_speed_grows_at_the_acceleration_limit():
    # Reversing from a target too close; the desired distance is lowered at runtime, so at once it is too far.
    params = replace(PARAMS, allow_reverse=True, smoothing_time_constant_s=0.0)
    controller = FollowController(params)
    target = frame((person_box(0, 0.7), 0.9, "person"))
    previous = 0.0
    for k in range(40):
        if k == 20:
            assert previous == pytest.approx(-params.max_reverse_mps)
            controller.set_params(replace(params, desired_height_fraction=1.0))
        command = controller.update(target, k * PERIOD, k * PERIOD)
        # Braking (at the braking limit) until stopped, and only then, in the time left, speeding up the other way.
        stopping_s = max(-previous, 0.0) / params.max_linear_decel_mps2
        forward_gain = max(command.linear_mps, 0.0) - max(previous, 0.0)
        assert forward_gain <= params.max_linear_accel_mps2 * max(PERIOD - stopping_s, 0.0) + 1e-9
        assert abs(command.linear_mps - previous) <= params.max_linear_decel_mps2 * PERIOD + 1e-9
        previous = command.linear_mps
    assert command.linear_mps > 0.2


def test_search_arc_is_slow_bounded_and_times_out():
    params = settings_from_mapping(FollowParams, {"search": "arc", "search_timeout_s": 3.0})
    controller = FollowController(params)
    left = frame((person_box(20, 0.3), 0.9, "person"))
    t = 0.0
    for _ in range(20):
        controller.update(left, t, t)
        t += PERIOD
    last_seen = t - PERIOD
    arcs = []
    while t < last_seen + params.lost_timeout_s + params.search_timeout_s + 1.0:
        command = controller.update(None, None, t)
        if controller.state == "searching" and t < last_seen + params.lost_timeout_s + params.search_timeout_s - 0.1:
            arcs.append(command)
        t += PERIOD
    assert arcs and all(0 < c.linear_mps <= params.search_speed_mps + 1e-9 for c in arcs[10:])
    assert all(c.angular_radps > 0 for c in arcs[10:])  # towards the side the target was last seen (left)
    assert_ackermann([c.linear_mps for c in arcs], [c.angular_radps for c in arcs])
    assert command.linear_mps == 0.0 and command.angular_radps == 0.0  # gave up


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"min_score": 1.5}, "min_score"),
        ({"camera_hfov_deg": 0.0}, "camera_hfov_deg"),
        ({"max_linear_mps": -1.0}, "max_linear_mps"),
        ({"wheelbase_m": float("nan")}, "wheelbase_m"),
        ({"search": "spin"}, "search"),
        ({"target_classes": []}, "target_classes"),
        ({"allow_reverse": "yes"}, "allow_reverse"),
        ({"search_steering_deg": 40.0}, "search_steering_deg"),
        ({"max_linear_mps": 11.0}, r"max_linear_mps must be in \[0, 10\]"),  # the field's declared limits
        ({"image_width": 0}, "image_width"),
        ({"acquire": "nearest"}, "acquire must be one of"),
        ({"image_width": "wide"}, "image_width must be an integer, got 'wide'"),  # not int()'s own message
        ({"min_score": None}, "min_score must be a number"),
        ({"target_classes": 3}, "target_classes must be a list of strings"),
    ],
)
def test_invalid_params_are_rejected_with_the_field_name(changes, field):
    with pytest.raises(ValueError, match=field):
        settings_from_mapping(FollowParams, changes)


def test_follow_params_from_a_mapping_are_coerced_and_foreign_keys_ignored():
    params = settings_from_mapping(
        FollowParams, {"target_classes": ["person", "dog"], "image_width": 320.0, "rate_hz": 5.0}
    )
    assert params.target_classes == ("person", "dog") and params.image_width == 320
    assert isinstance(params.image_width, int)


def test_the_controller_camera_is_built_once_per_configuration():
    controller = FollowController(PARAMS)
    assert controller.camera is controller.camera is PARAMS.camera
    wider = replace(PARAMS, camera_hfov_deg=75.0)
    controller.set_params(wider)
    assert controller.camera is wider.camera and controller.camera.fx_px < PARAMS.camera.fx_px
    controller.measured_camera = PinholeCamera(320, 240, 210.0, 150.0)  # from CameraInfo: it wins
    assert controller.camera is controller.measured_camera


def test_pinhole_bearing_is_positive_left_and_inverts():
    camera = PARAMS.camera
    assert camera.bearing_rad(camera.cx_px, 240.0) == 0.0
    assert camera.bearing_rad(0.0, 240.0) == pytest.approx(math.radians(PARAMS.camera_hfov_deg / 2))  # left edge
    assert camera.bearing_rad(PARAMS.image_width, 0.0) == pytest.approx(-math.radians(PARAMS.camera_hfov_deg / 2))
    for bearing in (-0.4, 0.1, 0.5):
        assert camera.bearing_rad(column_of(camera, bearing), 100.0) == pytest.approx(bearing)
    # A point (forward, left, up) in the camera frame lands on its bearing's column; up is above the middle row.
    column, row = camera.project(4.0, 1.0, 0.5)
    assert column == pytest.approx(column_of(camera, math.atan2(1.0, 4.0))) and column < camera.cx_px
    assert row == pytest.approx(240 - camera.fx_px * 0.5 / 4.0)
    assert camera.project(2.0, 0.0, 0.0) == (camera.cx_px, 240.0)


def test_follow_loop_hands_the_newest_frame_to_one_tick_only():
    loop = FollowLoop(PARAMS)
    left, right = frame((person_box(15, 0.25), 0.9, "person")), frame((person_box(-15, 0.25), 0.9, "person"))
    loop.offer(left, 0.0)
    loop.offer(right, 0.01)  # arrived before the tick: the older frame is never used
    assert loop.tick(0.02) == loop.controller.last_command and loop.controller.counters["frames"] == 1
    assert loop.controller.target.box[0] == pytest.approx(right.boxes[0][0])
    for k in range(2, 20):  # no new frame: the controller coasts on the track, counting no frame twice
        command = loop.tick(0.01 * k)
    assert loop.controller.counters["frames"] == 1 and loop.last_stamp_s == 0.01
    assert command.angular_radps < 0  # the person is on the right: turn right


def test_follow_loop_keeps_the_newest_frame_when_an_older_one_arrives_after_it():
    loop = FollowLoop(PARAMS)
    left, right = frame((person_box(15, 0.25), 0.9, "person")), frame((person_box(-15, 0.25), 0.9, "person"))
    loop.offer(right, 0.01)
    loop.offer(left, 0.0)  # out of order: older than the frame waiting
    loop.tick(0.02)
    assert loop.controller.target.stamp_s == 0.01 and loop.controller.target.box[0] == pytest.approx(right.boxes[0][0])


def test_class_mismatch_names_both_lists_and_suggests_the_case_insensitive_match():
    model = ("Person", "Stop Sign")
    assert class_mismatch(("Person",), model, "the model's classes") is None
    message = class_mismatch(("person", "dog"), model, "the model's classes")
    assert "['person', 'dog'] are not among the model's classes ['Person', 'Stop Sign']" in message
    assert "did you mean 'Person' for 'person'?" in message and "for 'dog'" not in message
    assert "did you mean" not in class_mismatch(("dog",), model, "the model's classes")


def test_follow_loop_reports_target_classes_it_can_never_follow():
    loop = FollowLoop(PARAMS)  # follows "person"
    assert loop.class_problem() is None  # nothing known yet
    loop.offer(frame(([0, 0, 10, 10], 0.9, "car")), 0.0)
    assert loop.class_problem() is None  # the detections show only what occurred: no proof of anything
    loop.offer(frame(([0, 0, 10, 10], 0.9, "Person")), 0.1)
    assert "did you mean 'Person' for 'person'" in loop.class_problem()  # a near miss is certain
    loop.model_classes = ("car", "Person")  # the detector's label map: now every target must be in it
    assert "the model's classes ['car', 'Person']" in loop.class_problem()
    loop.controller.set_params(settings_from_mapping(FollowParams, {"target_classes": ["Person"]}))
    assert loop.class_problem() is None


def test_a_finite_box_far_outside_the_image_is_malformed_and_never_steers():
    controller = FollowController(PARAMS)
    far_right = frame(([9.9e6 - 20, 180, 9.9e6 + 20, 300], 0.9, "person"))  # tried in issue 12: full lock
    slightly_outside = frame(([600.0, 180.0, 690.0, 300.0], 0.9, "person"))  # a detector that does not clip
    for k in range(20):
        command = controller.update(far_right, k * PERIOD, k * PERIOD)
        assert command == ZERO and controller.target is None
    assert controller.counters["outside_image"] == 20
    controller.update(slightly_outside, 20 * PERIOD, 20 * PERIOD)
    assert controller.target is not None and controller.counters["outside_image"] == 20


def test_a_calibrated_1280x720_camera_gives_the_640x480_commands_for_the_same_scene():
    """Bearing and distance come from the measured camera (off-centre principal point), not the configured one."""
    measured = PinholeCamera(1280, 720, fx_px=2 * PARAMS.camera.fx_px, cx_px=655.0)
    for bearing_deg, height_fraction in [(12.0, 0.25), (-20.0, 0.3)]:
        reference, calibrated = FollowController(PARAMS), FollowController(PARAMS)
        calibrated.measured_camera = measured
        small = person_box(bearing_deg, height_fraction)
        cx, h = column_of(measured, math.radians(bearing_deg)), height_fraction * 720
        large = [cx - 0.15 * h, 360 - h / 2, cx + 0.15 * h, 360 + h / 2]
        for k in range(40):
            t = k * PERIOD
            expected = reference.update(frame((small, 0.9, "person")), t, t)
            got = calibrated.update(frame((large, 0.9, "person")), t, t)
            assert got.linear_mps == pytest.approx(expected.linear_mps, abs=1e-6)
            assert got.angular_radps == pytest.approx(expected.angular_radps, abs=1e-6)
        assert math.copysign(1, got.angular_radps) == math.copysign(1, bearing_deg)  # turns towards it
        assert calibrated.counters["outside_image"] == 0  # the 1280 px boxes are inside the measured image


def test_closed_loop_with_another_camera_converges_like_the_configured_one():
    """The simulated 1280x720 75-deg camera is known from its calibration, as the node knows it from CameraInfo."""
    camera = SimParams(image_width=1280, image_height=720, camera_hfov_deg=75.0)
    desired = desired_distance_m(PERSON_HEIGHT_M, PARAMS.desired_height_fraction, camera)
    sim = Simulator(camera, make_scenario("static", desired, camera), seed=0)
    trace = run_closed_loop(FollowLoop(PARAMS), sim, 30.0)  # PARAMS: configured for 640x480 at 62 deg
    assert math.degrees(trace.bearing[0]) == pytest.approx(25.0, abs=0.5)
    metrics = path_metrics(trace, desired)
    assert metrics.settle_time_s <= 20.0 and metrics.steering_sign_changes <= 2


def outcome(name, seed, params=PARAMS):
    scenario = make_scenario(name, DESIRED, SIM)
    trace = run_closed_loop(FollowLoop(params), Simulator(SIM, scenario, seed=seed), scenario.duration_s)
    return follow_outcome(trace, scenario)


@pytest.mark.parametrize(("name", "seed"), [("occlusion_0.5s", 0), ("occlusion_0.5s", 1), ("occlusion_2s", 2)])
def test_the_target_is_reacquired_after_an_occlusion_though_a_bigger_person_stands_beside(name, seed):
    result = outcome(name, seed)
    assert result.kept_target and not result.taken_over
    # Back on it within two frames (10 Hz) plus the detector latency once it shows again.
    assert result.reacquired_after_s <= 2 * 0.1 + SIM.latency_s + 1e-6


def test_without_the_reacquisition_window_the_bigger_person_takes_over_after_a_2s_occlusion():
    """The scenario is hard: with the target forgotten at lost_timeout_s, the acquire rule takes the bystander."""
    result = outcome("occlusion_2s", 0, replace(PARAMS, reacquire_window_s=PARAMS.lost_timeout_s))
    assert result.taken_over and not result.kept_target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_person_crossing_in_front_at_a_similar_distance_never_takes_over(seed):
    result = outcome("crossing_people", seed)
    assert result.kept_target and not result.taken_over


@pytest.mark.parametrize("name", list(SWAPS))
@pytest.mark.parametrize("seed", [0, 1])
def test_when_the_tracker_swaps_the_crossing_peoples_ids_the_target_is_kept(name, seed):
    result = outcome(name, seed)
    assert result.kept_target and not result.taken_over
    assert result.id_switches >= 2  # the swap happened: each person's id changed


def test_without_the_jump_check_the_swapped_id_takes_the_follower_to_the_other_person(monkeypatch):
    monkeypatch.setattr(follow, "JUMP_CHI2", math.inf)
    result = outcome("crossing_swap_front", 0)
    assert result.taken_over and not result.kept_target


def test_a_wide_angle_camera_steers_on_the_true_bearing_of_a_box_at_the_image_edge():
    """Boxes seen through a barrel-distorted lens give the commands of the same scene through the configured camera.

    The box centre is where OpenCV's model of the lens puts the person's direction; the pinhole bearing of that
    pixel would be degrees short.
    """
    wide = PinholeCamera(640, 480, 330.0, 322.5, 328.0, 241.0, "plumb_bob", (-0.3, 0.09, 0.001, -0.0005, -0.012))
    matrix = np.array([[330.0, 0.0, 322.5], [0.0, 328.0, 241.0], [0.0, 0.0, 1.0]])
    for bearing_deg, down in [(28.0, 0.35), (-29.0, -0.35)]:
        bearing = math.radians(bearing_deg)
        ray = np.array([[[-math.sin(bearing), down, math.cos(bearing)]]])
        pixel, _ = cv2.projectPoints(ray, np.zeros(3), np.zeros(3), matrix, np.array(wide.distortion))
        u, v = pixel.reshape(2)
        assert abs(math.degrees(math.atan2(322.5 - u, 330.0)) - bearing_deg) > 2.0  # the pinhole error it fixes
        reference, calibrated = FollowController(PARAMS), FollowController(PARAMS)
        calibrated.measured_camera = wide
        h = 0.25 * 480
        box = [u - 0.15 * h, v - h / 2, u + 0.15 * h, v + h / 2]
        for k in range(40):
            t = k * PERIOD
            expected = reference.update(frame((person_box(bearing_deg, 0.25), 0.9, "person")), t, t)
            got = calibrated.update(frame((box, 0.9, "person")), t, t)
            assert got.angular_radps == pytest.approx(expected.angular_radps, abs=1e-6)
            assert got.linear_mps == pytest.approx(expected.linear_mps, abs=1e-6)
        assert calibrated.counters["outside_image"] == calibrated.counters["centres_outside_image"] == 0


def test_a_box_centre_outside_the_calibrated_image_is_kept_as_evidence_until_the_camera_changes():
    """CameraInfo for 320x240 while the detector sees 640x480: a centre beyond 320 px proves the mismatch."""
    controller = FollowController(PARAMS)
    controller.measured_camera = PinholeCamera(320, 240, 260.0, 160.0)
    inside = frame(([140.0, 60.0, 180.0, 180.0], 0.9, "person"))
    controller.update(inside, 0.0, 0.0)
    assert controller.outside_centre_px is None and controller.counters["centres_outside_image"] == 0
    right_half = frame(([310.0, 60.0, 350.0, 180.0], 0.9, "person"), ([500.0, 100.0, 540.0, 300.0], 0.8, "chair"))
    for k in range(1, 4):
        controller.update(right_half, k * PERIOD, k * PERIOD)
    # Every class counts: all boxes come from the same image. The first centre seen is the evidence.
    assert controller.counters["centres_outside_image"] == 6 and controller.outside_centre_px == (330.0, 120.0)
    controller.measured_camera = PinholeCamera(320, 240, 260.0, 160.0)  # the same calibration again: still proven
    assert controller.outside_centre_px == (330.0, 120.0)
    controller.measured_camera = PinholeCamera(640, 480, 520.0, 320.0)  # the camera's new calibration
    assert controller.outside_centre_px is None
    controller.update(right_half, 4 * PERIOD, 4 * PERIOD)
    assert controller.outside_centre_px is None and controller.counters["centres_outside_image"] == 6
