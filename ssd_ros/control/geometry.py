"""The rover's geometry and camera, written once, and the height assumed for a person.

:class:`RoverGeometry` is the one settings class for what every part of the robot must agree on: the
follower plans turns with the wheelbase and steering limit the base driver applies and the simulator
drives, and sees through the camera the simulator renders. ``FollowParams``, ``SimParams`` and the base
driver's ``Calibration`` extend it, so each node declares these parameters under the same names, from the
same fields, and one parameters file (``config/rover.yaml``) sets them for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property

from ssd_ros.control.camera import PinholeCamera
from ssd_ros.settings import Settings, setting

PERSON_HEIGHT_M = 1.7
"""The height assumed for a person (m): the simulated people, and the follower's distance in metres."""


@dataclass(frozen=True)
class RoverGeometry(Settings):
    """The rover's Ackermann geometry and its camera; defaults: the Adeept PiCar-B.

    About 0.14 m between the rear axle and the steered front axle, steering
    servo travel about +-30 deg at the wheels, Raspberry Pi camera v2 at 640x480 (about 62 deg horizontal field
    of view). All read-only: a node reads them at start-up (the base driver uses wheelbase and steering only).
    """

    wheelbase_m: float = setting(
        0.14,
        "distance between rear axle and steered front axle (m; PiCar-B: measure, 0.14 is an estimate)",
        limits=(0.01, 2.0),
        read_only=True,
    )
    max_steering_deg: float = setting(
        30.0,
        "steering angle limit at the wheels (deg), reached at the base's servo_left_ticks / servo_right_ticks; "
        "the minimum turning radius follows",
        limits=(1.0, 60.0),
        read_only=True,
    )
    camera_hfov_deg: float = setting(
        62.0,
        "camera horizontal field of view (deg); Pi camera v2 at 640x480 is about 62",
        limits=(1.0, 179.0),
        read_only=True,
    )
    image_width: int = setting(640, "width (px) of the camera's images", limits=(1, 100_000), read_only=True)
    image_height: int = setting(480, "height (px) of the camera's images", limits=(1, 100_000), read_only=True)

    @cached_property
    def camera(self) -> PinholeCamera:
        """The camera the image size and horizontal field of view describe (built once: they are frozen)."""
        return PinholeCamera.from_hfov(self.image_width, self.image_height, self.camera_hfov_deg)


def geometry_of(settings: RoverGeometry) -> dict[str, object]:
    """The rover's geometry from ``settings`` (any class extending :class:`RoverGeometry`), by field name.

    For making another part's settings for the same rover: ``SimParams(**geometry_of(follow_params))``.
    """
    return {f.name: getattr(settings, f.name) for f in fields(RoverGeometry)}
