"""Follow-the-object control law for a car-like (Ackermann) rover: detections in, (linear, angular) out.

The controller is called from a fixed-rate timer with the newest unconsumed detections (or ``None``
when no new frame arrived), so it decides on every tick, including the ones where the detector is
silent. Pipeline of one tick:

1. Frame intake: stale or out-of-order frames are ignored; the configured classes above the score
   threshold with finite, non-degenerate boxes are candidates.
2. Target selection by track id only (``Detection2D.id``: the tracker owns identity, see
   :mod:`ssd_ros.control.tracking`): with no target, acquire the largest (or best-scoring) tracked
   candidate; with one, the detection carrying its id, if its box moved plausibly (the target's own
   constant-velocity filter, corrected for the rover's turning, predicts where it should be). A box that
   jumped is another object under the target's id (the tracker swapped two people's ids where they
   crossed): that id is dropped, and the target is the candidate that is where it was going (the
   nearest plausible one, from then on by its id), never the dropped id. After ``lost_timeout_s`` the
   robot stops, but only the target's id is re-acquired for ``reacquire_window_s``; only then may
   another object be acquired.
3. Errors: bearing from the box centre (column and row) through the camera model, its lens distortion
   undone (:mod:`ssd_ros.control.camera`), corrected for the yaw the rover has turned since the image was taken
   (latency compensation); relative distance from the box height against ``desired_height_fraction``
   (height ~ 1 / distance).
4. Command: soft dead-bands, proportional laws, first-order smoothing, acceleration limits, and a
   steering *angle* state with a rate limit. The yaw rate is always derived from the speed and that
   steering angle through the bicycle model, so it respects the minimum turning radius and is zero
   at zero speed: the car never spins in place.
5. Safety: no target -> brake to zero; ``lost_timeout_s`` after the last sighting -> exact zero (or a
   slow search arc, never a spin); anything non-finite -> zero.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from ssd_ros.control.ackermann import steering_angle, yaw_rate
from ssd_ros.control.camera import PinholeCamera
from ssd_ros.control.geometry import RoverGeometry
from ssd_ros.control.tracking import BoxFilter, Tracker
from ssd_ros.settings import Settings, setting
from ssd_ros.vision.detections import Detections

SEARCH_MODES = ("stop", "arc")
ACQUIRE_MODES = ("largest", "score")


@dataclass(frozen=True)
class FollowParams(RoverGeometry):
    """Tuning of :class:`FollowController`. Units are in the names; angles in degrees for humans.

    The rover's geometry and camera are :class:`~ssd_ros.control.geometry.RoverGeometry`'s fields (the
    camera's only until a calibrated CameraInfo arrives). ``read_only`` fields bound speed, timeouts or
    calibration (see :func:`ssd_ros.settings.setting`); the others are tuning knobs.
    """

    target_classes: tuple[str, ...] = setting(
        ("person",), "class names that may be followed (Detection2D results[].hypothesis.class_id)"
    )
    min_score: float = setting(0.5, "minimum detection score of a candidate", limits=(0.0, 1.0))
    acquire: str = setting(
        "largest",
        "which candidate to acquire when no target is tracked: largest box or best score",
        choices=ACQUIRE_MODES,
    )
    desired_height_fraction: float = setting(
        0.5, "target box height / image height at the desired following distance", limits=(0.01, 1.0)
    )
    # Proportional laws. Yaw rate per radian of bearing error; speed per unit of relative distance
    # error (distance / desired - 1, estimated as desired_height_fraction / height_fraction - 1).
    bearing_gain_per_s: float = setting(1.5, "yaw rate (rad/s) per rad of bearing error", limits=(0.0, 100.0))
    speed_gain_mps: float = setting(
        1.2, "speed (m/s) per unit relative distance error (distance / desired - 1)", limits=(0.0, 100.0)
    )
    bearing_deadband_deg: float = setting(1.0, "bearing error treated as zero (deg)", limits=(0.0, 90.0))
    # A car cannot turn on the spot: when the distance loop says "stop" but the bearing is off, creep
    # forward (up to this speed, proportional to the bearing error) while not closer than
    # turn_creep_min_distance x desired, to turn towards the target on a tight arc.
    turn_creep_mps: float = setting(
        0.06,
        "creep speed used to turn towards an off-axis target when otherwise stopped (m/s)",
        limits=(0.0, 10.0),
        read_only=True,
    )
    turn_creep_min_distance: float = setting(
        0.85, "no creeping when closer than this fraction of the desired distance", limits=(0.0, 10.0)
    )
    distance_deadband: float = setting(0.04, "relative distance error treated as zero", limits=(0.0, 10.0))
    smoothing_time_constant_s: float = setting(
        0.15, "first-order smoothing of the desired speed and yaw rate (s)", limits=(0.0, 10.0)
    )
    max_linear_accel_mps2: float = setting(0.6, "acceleration limit (m/s^2)", limits=(0.01, 100.0), read_only=True)
    max_linear_decel_mps2: float = setting(
        1.2, "braking limit (m/s^2); braking may be harder than speeding up", limits=(0.01, 100.0), read_only=True
    )
    max_steering_rate_degps: float = setting(
        180.0, "steering angle rate limit (deg/s at the wheels)", limits=(1.0, 100_000.0), read_only=True
    )
    max_linear_mps: float = setting(0.35, "forward speed cap (m/s)", limits=(0.0, 10.0), read_only=True)
    max_reverse_mps: float = setting(
        0.15, "reverse speed cap (m/s), used only with allow_reverse", limits=(0.0, 10.0), read_only=True
    )
    allow_reverse: bool = setting(False, "back off when closer than desired", read_only=True)
    compensate_yaw: bool = setting(True, "correct the bearing for the yaw turned since the image was taken")
    max_detection_age_s: float = setting(
        0.5,
        "detections older than this (header stamp vs node clock) are ignored; a sighting older is not steered on (s)",
        limits=(0.01, 60.0),
        read_only=True,
    )
    lost_timeout_s: float = setting(
        1.0,
        "time without the target after which the robot stops (or searches) and forgets it (s)",
        limits=(0.01, 60.0),
        read_only=True,
    )
    search: str = setting(
        "stop",
        "behaviour after lost_timeout_s: stop, or a slow arc towards where the target was last seen",
        choices=SEARCH_MODES,
        read_only=True,
    )
    search_speed_mps: float = setting(0.08, "speed of the search arc (m/s)", limits=(0.0, 10.0), read_only=True)
    search_steering_deg: float = setting(
        20.0, "steering angle of the search arc (deg), at most max_steering_deg", limits=(0.0, 89.0)
    )
    search_timeout_s: float = setting(
        10.0, "the search arc stops after this long (s)", limits=(0.0, 3600.0), read_only=True
    )
    reacquire_window_s: float = setting(
        3.0,
        "after the last sighting, only the target's track id is re-acquired for this long; then any candidate "
        "may be (s)",
        limits=(0.0, 3600.0),
    )

    def check(self) -> None:
        """Raise ``ValueError`` naming the first field that contradicts another (or an empty class name)."""
        if not (self.target_classes and all(self.target_classes)):
            raise ValueError("target_classes must be non-empty names")
        if self.search_steering_deg > self.max_steering_deg:
            raise ValueError("search_steering_deg must be <= max_steering_deg")
        if self.reacquire_window_s < self.lost_timeout_s:
            raise ValueError("reacquire_window_s must be >= lost_timeout_s (the target is kept that long anyway)")


@dataclass(frozen=True)
class FollowerSettings(Settings):
    """How the follower node runs the loop: its rate and its command messages (the node's own parameters).

    Read by the node and by every tool that replays or simulates it (``bag_eval``, ``tune_follower``), from
    the same parameters file.
    """

    rate_hz: float = setting(20.0, "control and cmd_vel publication rate (Hz)", limits=(0.1, 1000.0), read_only=True)
    twist_stamped: bool = setting(False, "publish geometry_msgs/TwistStamped instead of Twist", read_only=True)
    start_enabled: bool = setting(True, "follow from start-up; otherwise wait for the enable service", read_only=True)
    diagnostics_period_s: float = setting(
        1.0, "period of /diagnostics messages (s)", limits=(0.05, 60.0), read_only=True
    )
    cmd_frame_id: str = setting("base_link", "frame_id of TwistStamped commands")
    camera_info_topic: str = setting(
        "camera/camera_info",
        "sensor_msgs/CameraInfo of the camera the detector sees: bearing and distance from its intrinsics and image "
        "size; without one, camera_hfov_deg, image_width and image_height are used (with one warning)",
        read_only=True,
    )


@dataclass(frozen=True)
class Command:
    """Velocity command in the robot frame (geometry_msgs/Twist linear.x, angular.z)."""

    linear_mps: float
    angular_radps: float


ZERO = Command(0.0, 0.0)


@dataclass
class Target:
    """The object being followed: its track id, last box, when that image was taken, and its image motion.

    ``track_id`` is "" while the target is re-found after its id's box jumped; ``dropped_ids`` are the ids
    that carried it and then jumped to another object (they are never taken for it again).
    """

    class_name: str
    box: np.ndarray  # xyxy pixels
    score: float
    stamp_s: float
    track_id: str
    motion: BoxFilter  # one row: the box filtered at stamp_s, in the image of then
    dropped_ids: set[str] = field(default_factory=set)
    noise_scale: float = 1.0  # the measured innovation variance over the filter's (the detector's own noise)
    suspect_frames: int = 0  # consecutive frames in which its id's box was implausible


# A box whose squared Mahalanobis distance from the target's predicted box is beyond this is not the target:
# chi-square with 4 degrees of freedom (centre x, centre y, width, height) at 99.9 %. The distance is taken
# against the target's measured innovation (``Target.noise_scale``: the filter's noise model is the tracker's,
# made for any detector, and far wider than a good one's), so the gate is as tight as the detector is steady.
JUMP_CHI2 = 18.47
# The noise scale is a running mean (this weight per sighting) of the distance over its expected value (4),
# never below MIN_NOISE_SCALE: boxes repeated exactly must not make every later move a jump.
NOISE_SCALE_RATE = 0.1
MIN_NOISE_SCALE = 0.05
# An implausible box is a jump when another box is where the target was going (its id went to another person
# and its own box got another id), or when it stays implausible this many frames in a row: once is noise.
JUMP_FRAMES = 2


def _soft_deadband(error: float, band: float) -> float:
    """Zero inside ``band``, continuous outside (no step when the error leaves the band)."""
    return math.copysign(max(abs(error) - band, 0.0), error)


def _approach(value: float, target: float, max_step: float) -> float:
    """Move ``value`` towards ``target`` by at most ``max_step``."""
    return value + max(-max_step, min(max_step, target - value))


class FollowController:
    """Class-targeted, Ackermann-aware follower. See the module docstring for the pipeline.

    Attributes:
        state: "disabled" | "searching" | "tracking" | "lost".
        enabled: when False every update returns zero and the target is forgotten.
        target: the followed object, or None (kept for ``reacquire_window_s`` after its last sighting).
        counters: frames used / ignored as stale / candidates rejected (for diagnostics).
    """

    # Commanded speeds below this are "stopped": the wheels cannot produce a yaw rate.
    _STOPPED_MPS = 1e-3
    # The longest tick integrated as one step; a stalled timer must not produce a huge jump.
    _MAX_DT_S = 0.5
    # How far (fraction of the image size) a box may reach beyond the image: detectors that do not clip
    # report partly visible objects a little outside; far outside is a malformed box.
    OUTSIDE_MARGIN = 0.1

    def __init__(self, params: FollowParams):
        """Create a controller for ``params`` (validated when they were made)."""
        self.params = params
        self._measured_camera: PinholeCamera | None = None
        # A box centre outside the camera model's image, the first since the model was set: the detections come
        # from another (larger) image than the model describes, or their publisher is broken.
        self.outside_centre_px: tuple[float, float] | None = None
        self.enabled = True
        self.counters = {
            "frames": 0,
            "stale_frames": 0,
            "rejected_candidates": 0,
            "outside_image": 0,
            "centres_outside_image": 0,
            "untracked_candidates": 0,
            "id_jumps": 0,
            "non_finite_commands": 0,
        }
        self.reset()

    # -- public API ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the target and the motion state (the next command starts from standstill)."""
        self.target: Target | None = None
        self.state = "searching" if self.enabled else "disabled"
        self.last_command = ZERO
        self.steering_rad = 0.0
        self._linear_filtered = 0.0
        self._angular_filtered = 0.0
        self._last_now: float | None = None
        self._last_frame_stamp: float | None = None
        self._search_since: float | None = None
        self._last_bearing = 0.0
        self._yaw_history: deque[tuple[float, float, float]] = deque()  # (t0, t1, yaw rate)

    def set_params(self, params: FollowParams) -> None:
        """Swap in new tuning at runtime (the target and motion state are kept)."""
        self.params = params

    @property
    def measured_camera(self) -> PinholeCamera | None:
        """The camera model from the camera's calibration (CameraInfo), if known.

        Setting another one forgets :attr:`outside_centre_px`, the evidence against the previous one.
        """
        return self._measured_camera

    @measured_camera.setter
    def measured_camera(self, camera: PinholeCamera | None) -> None:
        if camera != self._measured_camera:
            self.outside_centre_px = None
        self._measured_camera = camera

    @property
    def camera(self) -> PinholeCamera:
        """The camera the boxes are measured in: the calibrated one when known, else the configured field of view."""
        return self.measured_camera or self.params.camera

    @property
    def status(self) -> str:
        """What pictures of the follower say it does: ``state`` with ``searching`` split by whether a target is held.

        ``following`` (tracking its id), ``lost`` (missing for less than ``lost_timeout_s``: braking),
        ``re-acquiring`` (stopped, only its id is taken back until ``reacquire_window_s``; also while tracking a
        target whose id was dropped and not yet re-found), ``searching`` (no target) or ``disabled``.
        """
        if self.state == "tracking":
            return "following" if self.target.track_id else "re-acquiring"
        held = self.target is not None and self._last_now - self.target.stamp_s <= self.params.reacquire_window_s
        if self.state == "searching" and held:
            return "re-acquiring"
        return self.state

    def set_enabled(self, enabled: bool) -> None:
        """Enable or disable; either transition restarts from standstill with no target."""
        if enabled != self.enabled:
            self.enabled = enabled
            self.reset()

    def update(self, detections: Detections | None, stamp_s: float | None, now_s: float) -> Command:
        """One control tick.

        Args:
            detections: the newest frame's detections not yet given to the controller, or None
                when no new frame arrived since the last tick.
            stamp_s: when that image was taken (header stamp, seconds); None means "now".
            now_s: the current time on the same clock as the stamps.
        """
        p = self.params
        if self._last_now is not None and now_s < self._last_now - p.max_detection_age_s:
            # The clock went back (a looping bag replay, a restarted simulator, system time set back): the target's
            # stamp would lie in the future, so it would be steered on as fresh for as long as the jump, while every
            # new frame were refused as older than the last one. Every stamp held is void: start from standstill.
            # A smaller step back (an NTP correction) is within the future stamps the freshness checks accept.
            self.reset()
        dt = 0.0 if self._last_now is None else min(max(now_s - self._last_now, 0.0), self._MAX_DT_S)
        if self._last_now is not None and dt > 0.0:
            self._yaw_history.append((now_s - dt, now_s, self.last_command.angular_radps))
        self._last_now = now_s
        keep_s = p.max_detection_age_s + max(p.lost_timeout_s, p.reacquire_window_s)  # the target's prediction needs it
        while self._yaw_history and self._yaw_history[0][1] < now_s - keep_s:
            self._yaw_history.popleft()

        if not self.enabled:
            self.state = "disabled"
            return self._emit(ZERO)
        if detections is not None:
            self._intake(detections, now_s if stamp_s is None else stamp_s, now_s)

        target = self.target
        # A sighting is steered on until it is max_detection_age_s old, so a missed frame or two coast
        # on the (yaw-compensated) last bearing instead of braking.
        if target is not None and now_s - target.stamp_s <= p.max_detection_age_s:
            self.state = "tracking"
            self._search_since = None
            return self._emit(self._tracking_command(target, now_s, dt))
        if target is not None and now_s - target.stamp_s < p.lost_timeout_s:
            self.state = "lost"
            return self._emit(self._braking_command(dt))
        # Gone for lost_timeout_s (or never seen): stop steering on it; its id is re-acquired if it comes back
        # within reacquire_window_s, after which any candidate may be acquired.
        if target is not None:
            self._search_since = target.stamp_s + p.lost_timeout_s
        self.state = "searching"
        return self._emit(self._search_command(now_s, dt))

    # -- frame intake and target selection -------------------------------------------------------------
    def _intake(self, detections: Detections, stamp_s: float, now_s: float) -> None:
        p = self.params
        age = now_s - stamp_s
        if (
            not math.isfinite(stamp_s)
            or abs(age) > p.max_detection_age_s
            or (self._last_frame_stamp is not None and stamp_s <= self._last_frame_stamp)
        ):
            self.counters["stale_frames"] += 1
            return
        self.counters["frames"] += 1
        self._last_frame_stamp = stamp_s
        boxes, scores, names, ids = self._candidates(detections)
        target = self.target
        if target is not None and stamp_s - target.stamp_s > p.reacquire_window_s:
            target = self.target = None  # the re-acquisition window is over
        if target is None:
            if len(scores):
                key = scores if p.acquire == "score" else (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                i = int(np.argmax(key))
                self.target = Target(names[i], boxes[i], float(scores[i]), stamp_s, ids[i], BoxFilter(boxes[i]))
            return
        self._keep(target, boxes, scores, names, ids, stamp_s)

    def _keep(self, target: Target, boxes, scores, names, ids, stamp_s: float) -> None:
        """Find the target among the candidates: its id while its box moves plausibly, else re-found by its motion.

        Plausible = within :data:`JUMP_CHI2` of the target's predicted box (its own innovation scale). Its id on
        an implausible box is dropped when another candidate is where it was going, or after :data:`JUMP_FRAMES`
        such frames; while its id is dropped, the most plausible candidate (never a dropped id) is the target.
        An id that is simply missing is waited for: the tracker re-activates lost tracks under their old id.
        """
        motion = self._predict(target, stamp_s)
        same_class = np.array([n == target.class_name for n in names], bool)
        distance = np.where(same_class, motion.mahalanobis2(0, boxes) / target.noise_scale, np.inf)
        plausible = distance <= JUMP_CHI2
        if target.track_id in ids:
            i = ids.index(target.track_id)
            if plausible[i]:
                measured = max(distance[i] * target.noise_scale / 4, MIN_NOISE_SCALE)  # 4: the expected chi-square
                target.noise_scale += NOISE_SCALE_RATE * (measured - target.noise_scale)
                self._see(target, motion, i, boxes, scores, ids, stamp_s)
                return
            target.suspect_frames += 1
            plausible[i] = False
            others = plausible & [k not in target.dropped_ids for k in ids]
            if not others.any() and target.suspect_frames < JUMP_FRAMES:
                return  # one implausible box alone may be noise: coast on where it was going
            # Its id is on a box where the target cannot be: the tracker gave it to another object.
            self.counters["id_jumps"] += 1
            target.dropped_ids.add(target.track_id)
            target.track_id = ""
        if not target.track_id:
            distance[~plausible | [k in target.dropped_ids for k in ids]] = np.inf
            if np.isfinite(distance).any():
                self._see(target, motion, int(np.argmin(distance)), boxes, scores, ids, stamp_s)

    def _predict(self, target: Target, stamp_s: float) -> BoxFilter:
        """The target's box filter predicted to ``stamp_s``, in the image of then (the rover's turning undone)."""
        motion = copy.deepcopy(target.motion)
        motion.predict(stamp_s - target.stamp_s)
        if self.params.compensate_yaw:
            turned = self._yaw_between(target.stamp_s, stamp_s)
            column, row = float(motion.x[0, 0]), float(motion.x[0, 1])
            motion.shift_x(np.array([0]), self.camera.turned_column_px(column, row, turned) - column)
        return motion

    @staticmethod
    def _see(target: Target, motion: BoxFilter, i: int, boxes, scores, ids, stamp_s: float) -> None:
        """Candidate ``i`` is the target, seen at ``stamp_s``: its box, id and motion from now on.

        Its box is plausible, so the count of implausible frames starts again, also for an id just re-found: one
        bad box of it right after must be noise as for any id, not a second jump that drops it for good.
        """
        motion.correct(np.array([0]), boxes[i : i + 1])
        target.box, target.score, target.stamp_s = boxes[i], float(scores[i]), stamp_s
        target.track_id, target.motion, target.suspect_frames = ids[i], motion, 0

    def _candidates(self, detections: Detections) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
        """Boxes / scores / names / track ids of the detections that may be followed; the rest are counted.

        A finite box far outside the image (beyond ``OUTSIDE_MARGIN`` of its size) is malformed: its
        bearing would be nonsense (a centre at 1e7 px is full lock), so it is counted and never steers.
        Any box whose centre lies outside the image is counted, the first one kept (:attr:`outside_centre_px`): no
        detector sees an object's centre beyond its image, so the camera model describes another image.
        A detection without a track id (the tracker's tentative ones) is counted and never followed.
        """
        p, camera = self.params, self.camera
        boxes = np.asarray(detections.boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(detections.scores, np.float64).reshape(-1)
        names = detections.names
        keep = np.array([n in p.target_classes for n in names], dtype=bool)
        finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
        keep &= finite & (scores >= p.min_score)
        size = np.array([camera.width_px, camera.height_px], np.float64)
        margin = self.OUTSIDE_MARGIN * size
        with np.errstate(invalid="ignore"):
            keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            outside = finite & ((boxes[:, :2] < -margin) | (boxes[:, 2:] > size + margin)).any(axis=1)
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
            beyond = finite & ((centres < 0) | (centres > size)).any(axis=1)
        self.counters["outside_image"] += int(outside.sum())
        self.counters["centres_outside_image"] += int(beyond.sum())
        if beyond.any() and self.outside_centre_px is None:
            column, row = centres[np.argmax(beyond)]
            self.outside_centre_px = (float(column), float(row))
        keep &= ~outside
        self.counters["rejected_candidates"] += int(len(keep) - keep.sum())
        ids = detections.ids
        tracked = np.array([bool(i) for i in ids], bool)
        self.counters["untracked_candidates"] += int((keep & ~tracked).sum())
        index = np.flatnonzero(keep & tracked)
        return boxes[index], scores[index], [names[i] for i in index], [ids[i] for i in index]

    # -- commands ------------------------------------------------------------------------------------------
    def _tracking_command(self, target: Target, now_s: float, dt: float) -> Command:
        p = self.params
        x1, y1, x2, y2 = target.box
        bearing = self.camera.bearing_rad((x1 + x2) / 2.0, (y1 + y2) / 2.0)
        if p.compensate_yaw:
            bearing -= self._yaw_between(target.stamp_s, now_s)
        self._last_bearing = bearing
        height_fraction = (y2 - y1) / self.camera.height_px
        distance_error = p.desired_height_fraction / height_fraction - 1.0  # > 0: too far
        bearing_error = _soft_deadband(bearing, math.radians(p.bearing_deadband_deg))
        linear = p.speed_gain_mps * _soft_deadband(distance_error, p.distance_deadband)
        if distance_error > p.turn_creep_min_distance - 1.0:
            linear = max(linear, p.turn_creep_mps * min(1.0, abs(bearing_error) / math.radians(5.0)))
        linear = min(linear, p.max_linear_mps)
        linear = max(linear, -p.max_reverse_mps if p.allow_reverse else 0.0)
        angular = p.bearing_gain_per_s * bearing_error
        alpha = dt / (p.smoothing_time_constant_s + dt) if dt > 0 else 0.0
        self._linear_filtered += alpha * (linear - self._linear_filtered)
        self._angular_filtered += alpha * (angular - self._angular_filtered)
        return self._actuate(self._linear_filtered, self._angular_filtered, dt)

    def _braking_command(self, dt: float) -> Command:
        """Target not visible (yet within lost_timeout): brake to zero, keep the steering."""
        p = self.params
        linear = _approach(self.last_command.linear_mps, 0.0, p.max_linear_decel_mps2 * dt)
        self._linear_filtered, self._angular_filtered = linear, 0.0
        return Command(linear, yaw_rate(linear, self.steering_rad, p.wheelbase_m))

    def _search_command(self, now_s: float, dt: float) -> Command:
        p = self.params
        self._linear_filtered = self._angular_filtered = 0.0
        searching_for = None if self._search_since is None else now_s - self._search_since
        if p.search == "arc" and searching_for is not None and searching_for < p.search_timeout_s:
            # A slow arc towards where the target left the view, limited like any other motion.
            side = math.copysign(1.0, self._last_bearing)
            desired_angle = side * math.radians(p.search_steering_deg)
            angular = yaw_rate(p.search_speed_mps, desired_angle, p.wheelbase_m)
            return self._actuate(p.search_speed_mps, angular, dt)
        self.steering_rad = 0.0
        return ZERO

    def _actuate(self, linear: float, angular: float, dt: float) -> Command:
        """Apply acceleration and steering-rate limits; derive the yaw rate from the bicycle model."""
        p = self.params
        previous = self.last_command.linear_mps
        if linear * previous < 0:
            # Through zero: brake to a stop, then speed up the other way only in the time left, at the lower limit.
            braking_s = abs(previous) / p.max_linear_decel_mps2
            if braking_s >= dt:
                linear = _approach(previous, 0.0, p.max_linear_decel_mps2 * dt)
            else:
                linear = _approach(0.0, linear, p.max_linear_accel_mps2 * (dt - braking_s))
        else:
            speeding_up = abs(linear) > abs(previous)
            accel = p.max_linear_accel_mps2 if speeding_up else p.max_linear_decel_mps2
            linear = _approach(previous, linear, accel * dt)
        # The caps hold even when lowered at runtime while faster (then braking is immediate).
        lower = -p.max_reverse_mps if p.allow_reverse else 0.0
        linear = min(max(linear, lower), p.max_linear_mps)
        max_steering = math.radians(p.max_steering_deg)
        # Stopped wheels cannot turn the car; the base centres the servo then, so do we.
        desired_angle = steering_angle(linear, angular, p.wheelbase_m, max_steering)
        self.steering_rad = _approach(self.steering_rad, desired_angle, math.radians(p.max_steering_rate_degps) * dt)
        return Command(linear, yaw_rate(linear, self.steering_rad, p.wheelbase_m))

    def _emit(self, command: Command) -> Command:
        if not (math.isfinite(command.linear_mps) and math.isfinite(command.angular_radps)):
            self.counters["non_finite_commands"] += 1
            self._linear_filtered = self._angular_filtered = self.steering_rad = 0.0
            command = ZERO
        if abs(command.linear_mps) < self._STOPPED_MPS:
            command = ZERO
        self.last_command = command
        return command

    def _yaw_between(self, t0: float, t1: float) -> float:
        """Yaw (rad) the commanded rates turned the rover between ``t0`` and ``t1`` (``t0 <= t1``)."""
        total = 0.0
        for a, b, rate in self._yaw_history:
            overlap = min(b, t1) - max(a, t0)
            if overlap > 0:
                total += rate * overlap
        return total


# The ids of FollowLoop's own tracker: a tracking source whose frame has only unconfirmed detections sends no ids
# at all, and that frame's own ids must not be taken for the source's ("1" there is another object).
OWN_ID_PREFIX = "follower:"


class FollowLoop:
    r"""The follower's timer loop around :class:`FollowController`, whatever supplies frames and time.

    The follower node, ``bag_eval`` (on bag time) and the simulator's closed loop all run it: frames are
    given to :meth:`offer` as they arrive, and every :meth:`tick` of the fixed-rate timer hands the controller
    the newest frame not yet given to it (or None: the controller decides on every tick, so a silent
    detector still stops the robot). An older frame that was never ticked on is dropped, as a live
    follower would drop it, and so is one that arrives after a newer one still waiting. ``offer`` is the single
    entry point of frames: a frame without any track id (a detector with ``tracking`` off, another detector) goes
    through the loop's own
    :class:`~ssd_ros.control.tracking.Tracker` there, whose ids carry :data:`OWN_ID_PREFIX` so that they can never
    be taken for the source's ids. The camera model they are measured in is ``controller.measured_camera``
    (from CameraInfo).

    It also knows why the robot may never move: :meth:`class_problem` compares the target classes
    with the model's classes (:attr:`model_classes`, from the detector's label map) or, while those
    are unknown, with the class names seen in the detections.
    """

    def __init__(self, params: FollowParams):
        """A loop around a new controller for ``params``."""
        self.controller = FollowController(params)
        self.tracker = Tracker()  # for frames that arrive without track ids
        self.last_stamp_s: float | None = None  # stamp of the newest frame offered, for the age in diagnostics
        self.model_classes: tuple[str, ...] | None = None  # the detector's classes, once known
        self.seen_classes: set[str] = set()
        self._pending: tuple[Detections, float | None] | None = None
        # The clock at the last tick: a frame offered without a stamp ("now") arrived at most a period after it.
        self._last_tick_s = math.nan

    def offer(self, detections: Detections, stamp_s: float | None) -> Detections:
        """A frame arrived: its detections and when the image was taken (None: now); returns them with track ids."""
        if detections.track_ids is None:
            # Not the tracker's "no stamp" (NaN: its last one), under which its tracks would never age out.
            own = self.tracker.update(detections, self._last_tick_s if stamp_s is None else stamp_s).ids
            detections = replace(detections, track_ids=tuple(OWN_ID_PREFIX + i if i else "" for i in own))
        pending_stamp_s = None if self._pending is None else self._pending[1]
        # Frames may arrive out of order (best-effort transport): one older than the frame waiting must not replace
        # it, or the newest frame would never be used.
        if stamp_s is None or pending_stamp_s is None or stamp_s >= pending_stamp_s:
            self._pending = (detections, stamp_s)
        self.last_stamp_s = stamp_s
        self.seen_classes.update(detections.names)
        return detections

    def class_problem(self) -> str | None:
        """Why some target classes can never be followed, or None as far as is known.

        Against the model's classes every target must be one of them. Without them, the detections show
        only the classes that occurred, so only a near miss is certain: a target that differs from a seen
        class name by case alone (``person`` vs ``Person``).
        """
        targets = self.controller.params.target_classes
        if self.model_classes is not None:
            return class_mismatch(targets, self.model_classes, "the model's classes")
        seen = {name.lower() for name in self.seen_classes}
        near_misses = [c for c in targets if c not in self.seen_classes and c.lower() in seen]
        return class_mismatch(near_misses, sorted(self.seen_classes), "the class names in the detections")

    def tick(self, now_s: float) -> Command:
        """One timer tick at ``now_s`` (the clock of the stamps): the command to publish."""
        detections, stamp_s = self._pending if self._pending is not None else (None, None)
        self._pending = None
        self._last_tick_s = now_s
        return self.controller.update(detections, stamp_s, now_s)


def class_mismatch(target_classes, known_classes, where: str) -> str | None:
    """Why targets are never followed: those not in ``known_classes`` (from ``where``), or None if none.

    The one-line reason names both lists and suggests the case-insensitive match where there is one.
    """
    missing = [name for name in target_classes if name not in known_classes]
    if not missing:
        return None
    by_lower = {name.lower(): name for name in known_classes}
    hints = [f"{by_lower[name.lower()]!r} for {name!r}" for name in missing if name.lower() in by_lower]
    message = f"target_classes {missing} are not among {where} {list(known_classes)}, so they are never followed"
    if hints:
        message += f"; class names are case-sensitive: did you mean {', '.join(hints)}?"
    return message
