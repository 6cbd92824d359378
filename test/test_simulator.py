"""Simulator core: bicycle model, pinhole camera, simulated detector, scripted routes, metrics and the tool."""

import math

import numpy as np
import pytest

from ssd_ros.control.geometry import PERSON_HEIGHT_M
from ssd_ros.simulation.simulator import (
    SCENARIOS,
    CircleRoute,
    LineRoute,
    RoverState,
    Scenario,
    SimParams,
    Simulator,
    StaticRoute,
    StopAndGoRoute,
    Target,
    Trace,
    desired_distance_m,
    follow_outcome,
    make_scenario,
    path_metrics,
)
from ssd_ros.tools import tune_follower
from ssd_ros.vision.detections import iou_matrix

QUIET = SimParams(box_noise_px=0.0, miss_probability=0.0, frame_drop_probability=0.0)


def sim_with(targets, params=QUIET, rover=None):
    return Simulator(params, Scenario("test", "", rover or RoverState(), targets, 10.0))


def test_pinhole_projection_size_and_side():
    p = QUIET
    d = 4.0
    ahead = sim_with([Target("a", StaticRoute(p.camera_forward_m + d, 0.0))]).capture()[0]
    x1, y1, x2, y2 = ahead.box
    assert (x1 + x2) / 2 == pytest.approx(p.image_width / 2)
    f = p.camera.fx_px
    assert f == pytest.approx(320 / math.tan(math.radians(31)))  # 62 deg across 640 px
    assert y2 - y1 == pytest.approx(f * PERSON_HEIGHT_M / d)
    assert x2 - x1 == pytest.approx(f * 0.5 / d)
    assert ahead.depth_m == pytest.approx(d)
    left = sim_with([Target("a", StaticRoute(p.camera_forward_m + d, 1.0))]).capture()[0]
    assert (left.box[0] + left.box[2]) / 2 == pytest.approx(p.image_width / 2 - f * 1.0 / d)
    behind = sim_with([Target("a", StaticRoute(-3.0, 0.0))]).capture()
    outside = sim_with([Target("a", StaticRoute(1.0, 5.0))]).capture()
    assert behind == [] and outside == []


def test_desired_distance_matches_the_projection():
    d = desired_distance_m(PERSON_HEIGHT_M, 0.5, QUIET)
    view = sim_with([Target("a", StaticRoute(QUIET.camera_forward_m + d, 0.0))]).capture()[0]
    assert (view.box[3] - view.box[1]) / QUIET.image_height == pytest.approx(0.5)


def test_bicycle_model_turns_on_the_ackermann_radius_and_never_in_place():
    p = SimParams(motor_time_constant_s=1e-3, servo_rate_degps=1e6)
    sim = sim_with([], p)
    for _ in range(200):
        sim.step(0.0, 1.0, 0.01)  # yaw rate without speed: the car cannot turn
    assert (sim.rover.x, sim.rover.y, sim.rover.yaw) == (0.0, 0.0, 0.0)
    # Full lock at 0.2 m/s: a circle of radius wheelbase / tan(30 deg), whatever yaw rate was asked.
    radius = p.wheelbase_m / math.tan(math.radians(p.max_steering_deg))
    sim.step(0.2, 100.0, 0.001)
    start = (sim.rover.x, sim.rover.y)
    centre = (start[0], start[1] + radius)
    for _ in range(2000):
        sim.step(0.2, 100.0, 0.005)
        assert math.hypot(sim.rover.x - centre[0], sim.rover.y - centre[1]) == pytest.approx(radius, rel=0.02)
    # The wheel speed lags the command (motor) and the servo has a slew limit.
    slow = sim_with([], SimParams(motor_time_constant_s=0.2, servo_rate_degps=100))
    slow.step(0.3, 0.5, 0.05)
    assert 0 < slow.rover.speed_mps < 0.3
    assert slow.rover.steering_rad == pytest.approx(math.radians(5.0))


@pytest.mark.parametrize(("linear", "angular"), [(math.nan, 0.0), (0.2, math.inf), (-math.inf, math.nan)])
def test_a_non_finite_command_is_refused_not_taken_as_a_stop(linear, angular):
    """The base keeps its last good command on a non-finite one (picar_base.finite_command); the core used to
    brake the simulated rover instead. Callers apply the base's rule (follower_sim does, on arrival)."""
    sim = sim_with([])
    sim.step(0.3, 0.0, 0.05)
    before = (sim.time, sim.rover.x, sim.rover.speed_mps)
    with pytest.raises(ValueError, match="non-finite command"):
        sim.step(linear, angular, 0.05)
    assert (sim.time, sim.rover.x, sim.rover.speed_mps) == before


def test_detections_arrive_after_the_latency_with_the_capture_stamp_at_the_frame_rate():
    p = SimParams(
        latency_s=0.15, detection_rate_hz=10, box_noise_px=0.0, miss_probability=0.0, frame_drop_probability=0.0
    )
    sim = sim_with([Target("a", StaticRoute(3.0, 0.0))], p)
    arrivals = []
    for _ in range(300):
        sim.step(0.0, 0.0, 0.005)
        arrivals += [(sim.time, stamp, dets) for stamp, dets in sim.poll()]
    stamps = np.array([s for _, s, _ in arrivals])
    assert np.allclose(np.diff(stamps), 0.1)
    assert all(0.15 - 1e-6 <= t - s < 0.15 + 0.005 + 1e-6 for t, s, _ in arrivals)
    assert all(d.names == ["person"] and d.scores[0] == pytest.approx(p.score) for _, _, d in arrivals)
    sim.detections_enabled = False
    for _ in range(100):
        sim.step(0.0, 0.0, 0.005)
    late = sim.poll()
    assert all(s < sim.time - 0.3 for s, _ in late)  # only frames captured before the detector went silent


def test_noise_misses_and_dropped_frames():
    target = [Target("a", StaticRoute(3.0, 0.0))]
    never = sim_with(target, SimParams(miss_probability=1.0))
    detections, truth = never.detect(never.capture())
    assert len(detections) == 0 and truth == []
    dropped = sim_with(target, SimParams(frame_drop_probability=1.0, miss_probability=0.0))
    detections, truth = dropped.detect(dropped.capture())
    assert len(detections) == 0 and truth == []
    noisy = sim_with(target, SimParams(box_noise_px=3.0, miss_probability=0.0, frame_drop_probability=0.0))
    exact = noisy.capture()[0].box
    errors = np.array([noisy.detect(noisy.capture())[0].boxes[0] - exact for _ in range(400)])
    assert errors.std() == pytest.approx(3.0, rel=0.15) and abs(errors.mean()) < 0.5
    hidden = [Target("a", StaticRoute(3.0, 0.0), visible=False)]
    assert sim_with(hidden).capture() == []


def test_a_hidden_target_is_not_detected_during_its_window_and_frames_carry_their_ground_truth():
    sim = sim_with([Target("a", StaticRoute(3.0, 0.0), hidden=((0.5, 1.0),)), Target("b", StaticRoute(3.0, 1.0))])
    seen = {}
    while sim.time < 1.5:
        sim.step(0.0, 0.0, 0.01)
        for stamp, detections in sim.poll():
            seen[round(stamp, 2)] = (sim.truth[stamp], len(detections))
    assert seen[0.4] == (["a", "b"], 2) and seen[0.5] == (["b"], 1) and seen[0.9] == (["b"], 1)
    assert seen[1.0] == (["a", "b"], 2)


def test_follow_outcome_counts_take_overs_reacquisition_and_id_switches():
    scenario = Scenario(
        "t", "", RoverState(), [Target("a", StaticRoute(3, 0), hidden=((1.0, 2.0),)), Target("b", StaticRoute(3, 1))], 4
    )
    t = [0.5 * k for k in range(9)]  # 0 .. 4 s
    followed = ["a", "a", "", "", "", "a", "a", "a", "a"]  # back on "a" at 2.5 s
    frames = [
        (0.0, ["a", "b"], ("1", "2")),
        (1.0, ["b"], ("2",)),
        (2.0, ["a", "b"], ("3", "2")),
        (3.0, ["b", "a"], ("2", "3")),
    ]
    result = follow_outcome(Trace(t=t, followed=followed, frames=frames), scenario)
    assert result.kept_target and not result.taken_over and result.target_hidden_s == (1.0, 2.0)
    assert result.reacquired_after_s == pytest.approx(0.5) and result.id_switches == 1 and result.duration_s == 4.0
    followed[3] = "b"
    assert follow_outcome(Trace(t=t, followed=followed, frames=frames), scenario).taken_over
    followed[-1] = ""
    assert not follow_outcome(Trace(t=t, followed=followed, frames=frames), scenario).kept_target


def test_nearer_target_occludes_farther_one():
    targets = [
        Target("far", StaticRoute(5.0, 0.0)),
        Target("near", StaticRoute(2.0, 0.05)),
        Target("dog", StaticRoute(4.0, -1.5), class_name="dog", height_m=0.5),
    ]
    sim = sim_with(targets)
    assert [v.name for v in sim.capture()] == ["near", "dog"]
    dets, truth = sim.detect(sim.capture())
    assert dets.names == ["person", "dog"] and truth == ["near", "dog"]  # QUIET: nothing missed


def test_scripted_routes():
    assert StaticRoute(1.0, 2.0).position(7.0) == (1.0, 2.0)
    line = LineRoute(0.0, 0.0, 1.0, -0.5, t_start=1.0, t_end=3.0)
    assert line.position(0.5) == (0.0, 0.0) and line.position(2.0) == (1.0, -0.5) and line.position(9) == (2.0, -1.0)
    circle = CircleRoute(0.0, 0.0, 2.0, 0.5)
    quarter = math.pi / 2 * 2.0 / 0.5
    assert circle.position(quarter) == pytest.approx((0.0, 2.0))
    stop_go = StopAndGoRoute(0.0, 0.0, 0.0, 0.5, move_s=2.0, stop_s=3.0)
    assert stop_go.position(2.0) == pytest.approx((1.0, 0.0))
    assert stop_go.position(4.9) == pytest.approx((1.0, 0.0))
    assert stop_go.position(6.0) == pytest.approx((1.5, 0.0))


def test_scenarios_start_with_the_followed_target_in_view():
    for name in SCENARIOS:
        scenario = make_scenario(name, 3.0)
        views = Simulator(QUIET, scenario).capture()
        assert "person_a" in [v.name for v in views], name
    with pytest.raises(ValueError, match="unknown scenario"):
        make_scenario("zigzag", 3.0)


def test_path_metrics_on_a_synthetic_trace():
    t = np.arange(0, 10, 0.1)
    trace = Trace(
        t=list(t),
        bearing=list(np.radians(np.where(t < 4, 20 - 5 * t, -1.0))),
        distance=list(np.where(t < 6, 2.0 - t / 6 * 1.1, 0.95) * 3.0),
        steering=[0.1, -0.1, 0.1, 0.0],
    )
    m = path_metrics(trace, 3.0)
    assert m.settle_time_s == pytest.approx(5.0)  # distance enters the 10 % band at 4.91 s: first sample 5.0
    assert m.distance_overshoot == pytest.approx(0.1, abs=0.02)
    assert m.bearing_overshoot_deg == pytest.approx(1.0)
    assert m.steady_bearing_deg == pytest.approx(1.0)
    assert m.steady_distance == pytest.approx(0.05)
    assert m.steering_sign_changes == 2


def test_tune_follower_tool_prints_metrics_and_saves_a_plot(tmp_path, capsys):
    plot = tmp_path / "trajectories.png"
    params = tmp_path / "follower.yaml"
    params.write_text("follower:\n  ros__parameters:\n    max_linear_mps: 0.3\n    rate_hz: 20.0\n")
    assert tune_follower.main(["--paths", "static", "two_people", "--params", str(params), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "| static |" in out and "| two_people |" in out
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    params.write_text("follower:\n  ros__parameters:\n    min_score: 3.0\n")
    assert tune_follower.main(["--params", str(params), "--plot", str(plot)]) == 2
    params.write_text("- not\n- a mapping\n")
    assert tune_follower.main(["--params", str(params), "--plot", str(plot)]) == 2
    assert "sets nothing for /follower" in capsys.readouterr().err


def test_tune_follower_tool_reports_who_was_followed_over_seeds(tmp_path, capsys):
    plot = tmp_path / "outcomes.png"
    args = ["--trials", "2", "--paths", "occlusion_0.5s", "crossing_people", "--plot", str(plot)]
    assert tune_follower.main(args) == 0
    out = capsys.readouterr().out
    assert "| occlusion_0.5s | 2 | 100 % | 100 %" in out and "| crossing_people | 2 | 100 % | - | 0 % |" in out
    assert plot.stat().st_size > 5_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_frames_are_tracked_and_the_scripted_swap_exchanges_the_crossing_peoples_ids():
    """A stands, B walks in front of it from the left: from their first overlap on, each carries the other's id."""
    a, b = Target("a", StaticRoute(4.0, 0.0)), Target("b", LineRoute(3.0, 1.0, 0.0, -0.5))
    sim = Simulator(QUIET, Scenario("swap", "", RoverState(), [a, b], 10.0, swap_ids_at_iou=0.05))
    untracked = Simulator(QUIET, Scenario("swap", "", RoverState(), [a, b], 10.0), tracking=False)
    ids_of = {"a": [], "b": []}
    while sim.time < 1.8:
        sim.step(0.0, 0.0, 0.01)
        untracked.step(0.0, 0.0, 0.01)
        assert all(d.track_ids is None for _, d in untracked.poll())
        for stamp, detections in sim.poll():
            boxes = detections.boxes
            overlap = len(boxes) == 2 and float(iou_matrix(boxes[:1], boxes[1:])[0, 0]) >= 0.05
            for name, track_id in zip(sim.truth[stamp], detections.ids):
                ids_of[name].append((track_id, overlap))
    first = [k for k, (_, overlap) in enumerate(ids_of["a"]) if overlap][0]
    before = {name: {i for i, _ in ids[1:first]} for name, ids in ids_of.items()}  # frame 0: tentative
    after = {name: {i for i, _ in ids[first:]} for name, ids in ids_of.items()}
    assert before == {"a": {"1"}, "b": {"2"}} and after == {"a": {"2"}, "b": {"1"}}
