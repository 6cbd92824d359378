"""Closed-loop follower simulator core (no rclpy): rover, scripted targets, camera and detector.

A kinematic bicycle model of the PiCar-B, targets on scripted routes, and a pinhole camera +
"detector" that turns them into pixel boxes with noise, dropouts and latency, tracked like the detector
node's (the real :class:`~ssd_ros.control.tracking.Tracker`), with scripted id swaps.

World frame: x forward / y left of the rover's start pose, z up, metres; yaw positive to the left.
The rover's reference point is the rear-axle centre (where the bicycle model is exact); the camera
sits ``camera_forward_m`` ahead of it, ``camera_height_m`` above ground, looking along the heading.

Rendering hook: :meth:`Simulator.capture` returns the geometric view of every target (its class and
exact pixel box, projected by :class:`~ssd_ros.control.camera.PinholeCamera`); an image renderer can draw those into a
640x480 frame to put a real detector in the loop instead of :meth:`Simulator.detect`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from ssd_ros.control.ackermann import steering_angle
from ssd_ros.control.geometry import PERSON_HEIGHT_M, RoverGeometry
from ssd_ros.control.tracking import IdSwitchCounter, Tracker
from ssd_ros.settings import setting
from ssd_ros.vision.detections import Detections, iou_matrix


@dataclass(frozen=True)
class SimParams(RoverGeometry):
    """The simulated rover's actuators, camera mounting and detector (defaults: PiCar-B, Pi camera v2 at 640x480).

    Its geometry and camera are :class:`~ssd_ros.control.geometry.RoverGeometry`'s.

    The limits keep the physics meaningful: rates and time constants divide, probabilities are probabilities.
    """

    servo_rate_degps: float = setting(
        400.0, "steering servo slew rate at the wheels (deg/s; 1e6: instantaneous)", limits=(1.0, 1e6)
    )
    motor_time_constant_s: float = setting(
        0.15, "first-order lag of the wheel speed to the command (s)", limits=(0.001, 10.0)
    )
    max_speed_mps: float = setting(0.6, "rover top speed (m/s)", limits=(0.01, 20.0))
    camera_forward_m: float = setting(0.1, "camera position ahead of the rear axle (m)")
    camera_height_m: float = setting(0.12, "camera height above ground (m)")
    detection_rate_hz: float = setting(10.0, "simulated detector frame rate (Hz)", limits=(0.1, 1000.0))
    latency_s: float = setting(
        0.1, "image stamp to detections available: the simulated inference time (s)", limits=(0.0, 10.0)
    )
    box_noise_px: float = setting(2.0, "std-dev of each box edge (px)", limits=(0.0, 1000.0))
    miss_probability: float = setting(0.03, "probability a target is missed in a frame", limits=(0.0, 1.0))
    frame_drop_probability: float = setting(0.02, "probability a whole frame yields no detections", limits=(0.0, 1.0))
    score: float = setting(0.85, "score of simulated detections", limits=(0.0, 1.0))
    occlusion_fraction: float = setting(
        0.6, "a target whose box is covered this much by a nearer one is not detected", limits=(0.0, 1.0)
    )
    min_box_px: float = setting(4.0, "smallest detectable box side (px)", limits=(0.0, 10000.0))


class Route(Protocol):
    """A target's scripted motion on the ground plane."""

    def position(self, t: float) -> tuple[float, float]:
        """World (x, y) at time ``t`` seconds."""


@dataclass(frozen=True)
class StaticRoute:
    """Standing still."""

    x: float
    y: float

    def position(self, t: float) -> tuple[float, float]:  # noqa: D102
        return self.x, self.y


@dataclass(frozen=True)
class LineRoute:
    """Walking in a straight line at constant velocity between ``t_start`` and ``t_end``, still otherwise."""

    x: float
    y: float
    vx: float
    vy: float
    t_start: float = 0.0
    t_end: float = math.inf

    def position(self, t: float) -> tuple[float, float]:  # noqa: D102
        moving = min(max(t, self.t_start), self.t_end) - self.t_start
        return self.x + self.vx * moving, self.y + self.vy * moving


@dataclass(frozen=True)
class CircleRoute:
    """Walking a circle at constant speed (counter-clockwise for positive speed)."""

    cx: float
    cy: float
    radius: float
    speed_mps: float
    phase_rad: float = 0.0

    def position(self, t: float) -> tuple[float, float]:  # noqa: D102
        angle = self.phase_rad + self.speed_mps * t / self.radius
        return self.cx + self.radius * math.cos(angle), self.cy + self.radius * math.sin(angle)


@dataclass(frozen=True)
class StopAndGoRoute:
    """Walking along ``heading_rad`` for ``move_s``, standing for ``stop_s``, repeating."""

    x: float
    y: float
    heading_rad: float
    speed_mps: float
    move_s: float
    stop_s: float

    def position(self, t: float) -> tuple[float, float]:  # noqa: D102
        period = self.move_s + self.stop_s
        cycles, phase = divmod(max(t, 0.0), period)
        travelled = self.speed_mps * (cycles * self.move_s + min(phase, self.move_s))
        return self.x + travelled * math.cos(self.heading_rad), self.y + travelled * math.sin(self.heading_rad)


@dataclass
class Target:
    """Something the camera can see: a box-shaped object of a class standing on the ground."""

    name: str
    route: Route
    class_name: str = "person"
    height_m: float = PERSON_HEIGHT_M
    width_m: float = 0.5
    visible: bool = True  # False = removed from the scene (e.g. walked out of the room)
    hidden: tuple[tuple[float, float], ...] = ()  # (start, end) times (s) when it is not detected (occluded)

    def detectable(self, t: float) -> bool:
        """In the scene and not hidden at time ``t``."""
        return self.visible and not any(start <= t < end for start, end in self.hidden)


@dataclass
class RoverState:
    """Rear-axle pose and actuator state of the rover."""

    x: float = 0.0
    y: float = 0.0
    yaw: float = 0.0
    speed_mps: float = 0.0
    steering_rad: float = 0.0


@dataclass
class Scenario:
    """A starting pose and scripted targets; ``targets[0]`` is the one the follower should follow.

    ``swap_ids_at_iou``: the tracker swaps the ids of ``targets[0]`` and ``targets[1]`` at the first frame in
    which both are tracked and their boxes overlap at least this much (IoU), as trackers do where people cross.
    """

    name: str
    description: str
    rover: RoverState
    targets: list[Target]
    duration_s: float
    swap_ids_at_iou: float | None = None


@dataclass(frozen=True)
class TargetView:
    """A target as the camera sees it: exact (unclipped-to-noise) pixel box and depth."""

    name: str
    class_name: str
    box: np.ndarray  # xyxy pixels, clipped to the image
    depth_m: float


def desired_distance_m(target_height_m: float, desired_height_fraction: float, params: SimParams) -> float:
    """Camera depth at which a target of this height fills ``desired_height_fraction`` of the image."""
    return params.camera.fx_px * target_height_m / (desired_height_fraction * params.image_height)


def camera_pose(rover: RoverState, params: SimParams) -> tuple[float, float, float]:
    """World (x, y, yaw) of the camera."""
    return (
        rover.x + params.camera_forward_m * math.cos(rover.yaw),
        rover.y + params.camera_forward_m * math.sin(rover.yaw),
        rover.yaw,
    )


def bearing_and_distance(rover: RoverState, point: tuple[float, float], params: SimParams) -> tuple[float, float]:
    """Bearing (rad, positive left, wrapped to [-pi, pi)) and ground distance from the camera to ``point``."""
    cx, cy, yaw = camera_pose(rover, params)
    dx, dy = point[0] - cx, point[1] - cy
    bearing = (math.atan2(dy, dx) - yaw + math.pi) % (2 * math.pi) - math.pi
    return bearing, math.hypot(dx, dy)


MAX_TRUTH_FRAMES = 200  # frames of ground truth kept: far more than a detection's latency


class Simulator:
    """Steps the rover under velocity commands and produces detections like the detector node would.

    Frames are taken every ``1 / detection_rate_hz`` seconds; their detections become available
    ``latency_s`` later (:meth:`poll`) with the capture time as stamp, exactly as a detector
    publishes the image header's stamp after inference, with track ids when ``tracking`` (the detector
    node's default) and the scenario's id swap applied.
    """

    def __init__(self, params: SimParams, scenario: Scenario, seed: int = 0, tracking: bool = True):
        """Start ``scenario`` at time 0 with a reproducible noise ``seed``."""
        self.params = params
        self.scenario = scenario
        self.rover = RoverState(**vars(scenario.rover))
        self.targets = scenario.targets
        self.time = 0.0
        self.class_names = tuple(dict.fromkeys(t.class_name for t in self.targets))
        self._rng = np.random.default_rng(seed)
        self._next_frame_s = 1.0 / params.detection_rate_hz
        self._pending: deque[tuple[float, float, Detections]] = deque()
        self.detections_enabled = True  # False = the detector went silent
        # Ground truth of the recent frames: stamp -> the target name of each detection (for the metrics).
        self.truth: dict[float, list[str]] = {}
        self._image_size = np.array([params.image_width, params.image_height] * 2, np.float64)  # clip to it
        self.tracker = Tracker() if tracking else None
        self._swapped: dict[str, str] = {}  # the tracker's id -> the id published, once the scripted swap happened

    def step(self, linear_mps: float, angular_radps: float, dt: float) -> None:
        """Advance ``dt`` seconds with the given Twist command, mapped to wheels like the base driver.

        The command must be finite: the base never drives on a non-finite one but keeps the last good command
        until its timeout (``ssd_ros.rover.picar_base.finite_command``), which ``follower_sim`` does as each
        ``cmd_vel`` arrives; stopping here instead would make the simulator react unlike the car.
        """
        if not (math.isfinite(linear_mps) and math.isfinite(angular_radps)):
            raise ValueError(f"non-finite command (linear {linear_mps} m/s, angular {angular_radps} rad/s)")
        p, r = self.params, self.rover
        max_steering = math.radians(p.max_steering_deg)
        target_steering = steering_angle(linear_mps, angular_radps, p.wheelbase_m, max_steering)
        max_step = math.radians(p.servo_rate_degps) * dt
        r.steering_rad += max(-max_step, min(max_step, target_steering - r.steering_rad))
        target_speed = max(-p.max_speed_mps, min(p.max_speed_mps, linear_mps))
        r.speed_mps += (target_speed - r.speed_mps) * (1.0 - math.exp(-dt / p.motor_time_constant_s))
        # Exact integration of the bicycle model over dt (arc of constant curvature).
        curvature = math.tan(r.steering_rad) / p.wheelbase_m
        ds = r.speed_mps * dt
        dyaw = ds * curvature
        if abs(dyaw) < 1e-9:
            r.x += ds * math.cos(r.yaw)
            r.y += ds * math.sin(r.yaw)
        else:
            r.x += (math.sin(r.yaw + dyaw) - math.sin(r.yaw)) / curvature
            r.y -= (math.cos(r.yaw + dyaw) - math.cos(r.yaw)) / curvature
        r.yaw = (r.yaw + dyaw + math.pi) % (2 * math.pi) - math.pi
        self.time += dt
        while self.time + 1e-9 >= self._next_frame_s:
            if self.detections_enabled:
                detections, self.truth[self.time] = self.detect(self.capture())
                if self.tracker is not None:
                    detections = self._swap_ids(self.tracker.update(detections, self.time), self.truth[self.time])
                self._pending.append((self.time + p.latency_s, self.time, detections))
                while len(self.truth) > MAX_TRUTH_FRAMES:
                    del self.truth[next(iter(self.truth))]
            self._next_frame_s += 1.0 / p.detection_rate_hz

    def poll(self) -> list[tuple[float, Detections]]:
        """(stamp, detections) of every frame whose inference finished by now, oldest first."""
        ready = []
        while self._pending and self._pending[0][0] <= self.time + 1e-9:
            _, stamp, detections = self._pending.popleft()
            ready.append((stamp, detections))
        return ready

    def target_positions(self) -> list[tuple[float, float]]:
        """World (x, y) of every target now."""
        return [t.route.position(self.time) for t in self.targets]

    def capture(self) -> list[TargetView]:
        """Project every visible target through the pinhole camera; nearer targets occlude farther ones."""
        p = self.params
        cam_x, cam_y, yaw = camera_pose(self.rover, p)
        cos_y, sin_y = math.cos(yaw), math.sin(yaw)
        views = []
        for target in self.targets:
            if not target.detectable(self.time):
                continue
            tx, ty = target.route.position(self.time)
            depth = (tx - cam_x) * cos_y + (ty - cam_y) * sin_y
            lateral = -(tx - cam_x) * sin_y + (ty - cam_y) * cos_y  # positive = left
            if depth < 0.05:
                continue
            # Its left edge at its top, its right edge at the ground (the camera frame's y is to the left).
            x1, top = p.camera.project(depth, lateral + target.width_m / 2.0, target.height_m - p.camera_height_m)
            x2, bottom = p.camera.project(depth, lateral - target.width_m / 2.0, -p.camera_height_m)
            box = np.clip(np.array([x1, top, x2, bottom]), 0.0, self._image_size)
            if box[2] - box[0] < p.min_box_px or box[3] - box[1] < p.min_box_px:
                continue
            views.append(TargetView(target.name, target.class_name, box, depth))
        return [v for v in views if not self._occluded(v, views)]

    def _occluded(self, view: TargetView, views: list[TargetView]) -> bool:
        area = (view.box[2] - view.box[0]) * (view.box[3] - view.box[1])
        for other in views:
            if other.depth_m < view.depth_m:
                w = min(view.box[2], other.box[2]) - max(view.box[0], other.box[0])
                h = min(view.box[3], other.box[3]) - max(view.box[1], other.box[1])
                if w > 0 and h > 0 and w * h >= self.params.occlusion_fraction * area:
                    return True
        return False

    def _swap_ids(self, detections: Detections, names: list[str]) -> Detections:
        """The scenario's id swap: from its frame on, targets[0] and targets[1] carry each other's ids."""
        threshold = self.scenario.swap_ids_at_iou
        if threshold is not None and not self._swapped:
            first, second = (t.name for t in self.scenario.targets[:2])
            ids = detections.ids
            if first in names and second in names:
                i, j = names.index(first), names.index(second)
                boxes = np.asarray(detections.boxes, np.float64)[[i, j]]
                if ids[i] and ids[j] and iou_matrix(boxes[:1], boxes[1:])[0, 0] >= threshold:
                    self._swapped = {ids[i]: ids[j], ids[j]: ids[i]}
        if not self._swapped:
            return detections
        return replace(detections, track_ids=tuple(self._swapped.get(i, i) for i in detections.ids))

    def detect(self, views: list[TargetView]) -> tuple[Detections, list[str]]:
        """What a detector reports for these views, and the ground truth: the name of each detection's target.

        The detector adds edge noise, misses targets at random and drops whole frames.
        """
        p = self.params
        if self._rng.random() < p.frame_drop_probability:
            return Detections.empty(self.class_names), []
        kept = [v for v in views if self._rng.random() >= p.miss_probability]
        boxes = np.array([v.box for v in kept], np.float64).reshape(-1, 4)
        boxes += self._rng.normal(0.0, p.box_noise_px, boxes.shape)
        boxes = np.clip(boxes, 0.0, self._image_size)
        scores = np.full(len(kept), p.score, np.float32)
        labels = np.array([self.class_names.index(v.class_name) for v in kept], np.int64)
        return Detections(boxes.astype(np.float32), scores, labels, self.class_names), [v.name for v in kept]


# -- scripted scenarios -------------------------------------------------------------------------------------
def make_scenario(name: str, desired_distance: float, params: SimParams = SimParams()) -> Scenario:
    """A named scenario scaled to the follower's desired distance (see :data:`SCENARIOS`)."""
    d, cam = desired_distance, params.camera_forward_m
    if name == "static":
        bearing = math.radians(25.0)
        return Scenario(
            name,
            "standing person 25 deg off-axis at twice the desired distance",
            RoverState(),
            [Target("person_a", StaticRoute(cam + 2 * d * math.cos(bearing), 2 * d * math.sin(bearing)))],
            40.0,
        )
    if name == "crossing":
        return Scenario(
            name,
            "person walking across the view at 0.25 m/s, 1.3x the desired distance ahead",
            RoverState(),
            [Target("person_a", LineRoute(cam + 1.3 * d, 0.4 * d, 0.0, -0.25))],
            40.0,
        )
    if name == "circle":
        return Scenario(
            name,
            "person walking a 3 m-radius circle at 0.2 m/s, starting 1.3x the desired distance ahead",
            RoverState(),
            [Target("person_a", CircleRoute(cam + 1.3 * d, 3.0, 3.0, 0.2, -math.pi / 2))],
            60.0,
        )
    if name == "stop_and_go":
        return Scenario(
            name,
            "person walking away at 0.25 m/s for 4 s, standing for 4 s, repeating",
            RoverState(),
            [Target("person_a", StopAndGoRoute(cam + 1.2 * d, 0.0, 0.0, 0.25, 4.0, 4.0))],
            40.0,
        )
    if name == "two_people":
        # B starts out of view on the left and walks across in front of A (closer, so bigger and
        # briefly occluding A), then stops in view on the right.
        near = 0.55 * d
        return Scenario(
            name,
            "person B crosses in front of the followed person A and stays in view",
            RoverState(),
            [
                Target("person_a", StaticRoute(cam + 1.2 * d, 0.0)),
                Target("person_b", LineRoute(cam + near, near * 0.9, 0.0, -1.0, 2.0, 2.0 + near * 1.2)),
            ],
            20.0,
        )
    if name in OCCLUSIONS:
        return _occlusion_scenario(name, OCCLUSIONS[name], d, cam)
    if name == "crossing_people":
        # A walks right across the view; B, nearer (bigger), walks left from out of view on the right, passes
        # in front of A (hiding it) and walks on out of view on the left.
        return Scenario(
            name,
            "person B walks across in front of the followed person A, in the opposite direction",
            RoverState(),
            [
                Target("person_a", LineRoute(cam + 1.3 * d, 0.2 * d, 0.0, -0.2)),
                Target("person_b", LineRoute(cam + 1.1 * d, -0.9 * d, 0.0, 0.5, 2.0)),
            ],
            16.0,
        )
    if name in SWAPS:
        return _swap_scenario(name, *SWAPS[name], d, cam)
    raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")


# Occlusion scenarios: hidden from OCCLUSION_START_S for this long (s).
OCCLUSIONS = {"occlusion_0.5s": 0.5, "occlusion_1s": 1.0, "occlusion_2s": 2.0}
OCCLUSION_START_S = 8.0


def _occlusion_scenario(name: str, hidden_s: float, d: float, cam: float) -> Scenario:
    """A walks slowly across the view and is not detected for ``hidden_s``; B, nearer, stands in view beside.

    B enters from the right once A is followed and stays: it is bigger than A, so the acquire rule would take it
    if the follower forgot A during the occlusion.
    """
    hide = (OCCLUSION_START_S, OCCLUSION_START_S + hidden_s)
    return Scenario(
        name,
        f"the followed person A, walking across, is hidden for {hidden_s:g} s while a nearer person B stands beside",
        RoverState(),
        [
            Target("person_a", LineRoute(cam + 1.2 * d, 0.15 * d, 0.0, -0.1), hidden=(hide,)),
            Target("person_b", LineRoute(cam + 0.8 * d, -0.8 * d, 0.0, 0.5, 2.0, 2.0 + 0.55 * d / 0.5)),
        ],
        hide[1] + 6.0,
    )


# Crossings with an id swap: B's depth as a multiple of A's, and the overlap (IoU) at which the ids swap.
SWAPS = {"crossing_swap_front": (0.8, 0.05), "crossing_swap_behind": (1.25, 0.05), "crossing_swap_overlap": (0.8, 0.15)}


def _swap_scenario(name: str, depth: float, swap_iou: float, d: float, cam: float) -> Scenario:
    """A walks right across the view; B, at ``depth`` times A's distance, walks left across it; their ids swap.

    The tracker gives A's id to B and B's to A where their boxes first overlap ``swap_iou``: the follower's id
    now steers on B, who walks on out of view, while A carries the id the follower has never followed.
    """
    a_x, b_x = cam + 1.3 * d, cam + 1.3 * d * depth
    where = "in front of" if depth < 1.0 else "behind"
    return Scenario(
        name,
        f"person B walks across {where} the followed person A; their track ids swap at IoU {swap_iou:g}",
        RoverState(),
        [
            Target("person_a", LineRoute(a_x, 0.2 * d, 0.0, -0.2)),
            Target("person_b", LineRoute(b_x, -0.7 * b_x, 0.0, 0.5, 2.0)),
        ],
        16.0,
        swap_ids_at_iou=swap_iou,
    )


SCENARIOS = ("static", "crossing", "circle", "stop_and_go", "two_people", *OCCLUSIONS, "crossing_people", *SWAPS)
# Scenarios with a second person: who is followed is what they test (see follow_outcome).
MULTI_PERSON_SCENARIOS = ("two_people", *OCCLUSIONS, "crossing_people", *SWAPS)


# -- closed loop and metrics --------------------------------------------------------------------------------
@dataclass
class Trace:
    """Time series of a closed-loop run (bearing / distance are to ``targets[0]`` from the camera)."""

    t: list[float] = field(default_factory=list)
    rover: list[tuple[float, float, float]] = field(default_factory=list)
    targets: list[list[tuple[float, float]]] = field(default_factory=list)
    linear: list[float] = field(default_factory=list)
    angular: list[float] = field(default_factory=list)
    steering: list[float] = field(default_factory=list)
    state: list[str] = field(default_factory=list)
    bearing: list[float] = field(default_factory=list)
    distance: list[float] = field(default_factory=list)
    followed: list[str] = field(default_factory=list)  # per tick: the target the follower steers on, or ""
    # per frame offered: (stamp, ground-truth target names, track ids) of its detections
    frames: list[tuple[float, list[str], tuple[str, ...]]] = field(default_factory=list)


def run_closed_loop(
    loop, sim: Simulator, duration_s: float, control_rate_hz: float = 20.0, physics_dt_s: float = 0.005
) -> Trace:
    """Run ``loop`` (a :class:`~ssd_ros.control.follow.FollowLoop`) against ``sim`` until ``duration_s``, like the node.

    Frames are offered to the loop when their inference finishes; it ticks at ``control_rate_hz`` and its
    command is held until the next tick. The follower knows the simulated camera, as the node does from the
    simulator node's CameraInfo. Calling again with the same loop and simulator continues the run.
    """
    loop.controller.measured_camera = sim.params.camera
    trace = Trace()
    steps_per_tick = max(1, round(1.0 / (control_rate_hz * physics_dt_s)))
    command = (0.0, 0.0)
    step = 0
    while sim.time < duration_s - 1e-9:
        if step % steps_per_tick == 0:
            for stamp, detections in sim.poll():
                tracked = loop.offer(detections, stamp)
                trace.frames.append((stamp, sim.truth.get(stamp, []), tracked.track_ids))
            out = loop.tick(sim.time)
            command = (out.linear_mps, out.angular_radps)
            bearing, distance = bearing_and_distance(sim.rover, sim.target_positions()[0], sim.params)
            trace.t.append(sim.time)
            trace.rover.append((sim.rover.x, sim.rover.y, sim.rover.yaw))
            trace.targets.append(sim.target_positions())
            trace.linear.append(command[0])
            trace.angular.append(command[1])
            trace.steering.append(sim.rover.steering_rad)
            trace.state.append(loop.controller.state)
            trace.bearing.append(bearing)
            trace.distance.append(distance)
            trace.followed.append(followed_target(loop.controller, trace.frames))
        sim.step(*command, physics_dt_s)
        step += 1
    return trace


def followed_target(controller, frames) -> str:
    """Ground-truth name of the target ``controller`` steers on now ("" when it steers on none).

    The controller's target box is one of the detections of the frame it came from; the frame's ground truth
    names that detection's target (matched by track id, the boxes being the same detection).
    """
    target = controller.target
    if target is None or controller.state != "tracking" or not target.track_id:
        return ""
    for stamp, names, ids in reversed(frames):
        if stamp == target.stamp_s:
            return names[ids.index(target.track_id)] if target.track_id in ids and len(names) == len(ids) else ""
        if stamp < target.stamp_s:
            break
    return ""


@dataclass(frozen=True)
class FollowOutcome:
    """Who was followed in a run with several people (targets[0] is the one to follow).

    Attributes:
        kept_target: the follower steers on ``targets[0]`` at the end of the run.
        taken_over: it steered on another person at some tick.
        target_hidden_s: (start, end) of ``targets[0]``'s occlusion, if scripted.
        reacquired_after_s: time from the end of the occlusion to steering on ``targets[0]`` again (NaN: never).
        id_switches: changes of the track id of any ground-truth target between its detected frames.
        duration_s: length of the run.
    """

    kept_target: bool
    taken_over: bool
    target_hidden_s: tuple[float, float] | None
    reacquired_after_s: float
    id_switches: int
    duration_s: float


def follow_outcome(trace: Trace, scenario: Scenario) -> FollowOutcome:
    """:class:`FollowOutcome` of a closed-loop ``trace`` of ``scenario``."""
    target = scenario.targets[0].name
    hidden = scenario.targets[0].hidden[0] if scenario.targets[0].hidden else None
    reacquired = math.nan
    if hidden is not None:
        back = [t for t, name in zip(trace.t, trace.followed) if t >= hidden[1] and name == target]
        reacquired = back[0] - hidden[1] if back else math.nan
    switches = IdSwitchCounter()
    for _, names, ids in trace.frames:
        switches.add(zip(names, ids))
    ending = [name for t, name in zip(trace.t, trace.followed) if t >= trace.t[-1] - 1.0]
    return FollowOutcome(
        kept_target=bool(ending) and all(name == target for name in ending),
        taken_over=any(name not in ("", target) for name in trace.followed),
        target_hidden_s=hidden,
        reacquired_after_s=reacquired,
        id_switches=switches.switches,
        duration_s=trace.t[-1] - trace.t[0] if trace.t else 0.0,
    )


@dataclass(frozen=True)
class PathMetrics:
    """Follow quality of one run against the desired distance.

    Attributes:
        settle_time_s: first time after which bearing error stays within ``bearing_tol_deg`` and the
            distance within ``distance_tol`` (relative) of desired until the end; NaN if never.
        distance_overshoot: how far inside the desired distance the rover got, relative (0 = never closer).
        bearing_overshoot_deg: largest bearing error on the opposite side of the initial error.
        steady_bearing_deg / steady_distance: mean absolute errors over the last quarter of the run.
        steering_sign_changes: sign changes of the steering (ignoring |angle| < 1 deg).
    """

    settle_time_s: float
    distance_overshoot: float
    bearing_overshoot_deg: float
    steady_bearing_deg: float
    steady_distance: float
    steering_sign_changes: int


def steering_sign_changes(steering_rad, threshold_deg: float = 1.0) -> int:
    """Number of left/right reversals of a steering series, ignoring angles within ``threshold_deg``."""
    signs = [math.copysign(1, s) for s in steering_rad if abs(s) > math.radians(threshold_deg)]
    return sum(1 for a, b in zip(signs, signs[1:]) if a != b)


def path_metrics(
    trace: Trace, desired_distance: float, bearing_tol_deg: float = 3.0, distance_tol: float = 0.10
) -> PathMetrics:
    """Settle time, overshoot, steady-state error and steering reversals of ``trace``."""
    t = np.asarray(trace.t)
    bearing = np.degrees(np.asarray(trace.bearing))
    rel = np.asarray(trace.distance) / desired_distance - 1.0
    inside = (np.abs(bearing) <= bearing_tol_deg) & (np.abs(rel) <= distance_tol)
    outside = np.flatnonzero(~inside)
    if not inside[-1]:
        settle = math.nan
    else:
        settle = float(t[outside[-1] + 1]) if len(outside) else float(t[0])
    initial_side = math.copysign(1.0, bearing[0])
    tail = t >= t[-1] - 0.25 * (t[-1] - t[0])
    return PathMetrics(
        settle_time_s=settle,
        distance_overshoot=float(max(0.0, -rel.min())),
        bearing_overshoot_deg=float(max(0.0, (-initial_side * bearing).max())),
        steady_bearing_deg=float(np.abs(bearing[tail]).mean()),
        steady_distance=float(np.abs(rel[tail]).mean()),
        steering_sign_changes=steering_sign_changes(trace.steering),
    )
