"""Pinhole camera model: the one place where a pixel column becomes a bearing, and back.

Shared by the follower (bearing of a box) and the simulator (projection of a target), so both agree
on the geometry by construction. Distortion is not modelled: at the Pi camera's 62 deg field of view
it moves a box centre by a few pixels at the image edge, well inside the follower's dead-band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PinholeCamera:
    """Image size and the horizontal intrinsics (``fx``, ``cx`` of the camera matrix), in pixels."""

    width_px: int
    height_px: int
    fx_px: float
    cx_px: float

    @classmethod
    def from_hfov(cls, width_px: int, height_px: int, hfov_deg: float) -> PinholeCamera:
        """A centred camera whose horizontal field of view is ``hfov_deg`` (square pixels)."""
        fx = (width_px / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
        return cls(width_px, height_px, fx, width_px / 2.0)

    def bearing_rad(self, column_px: float) -> float:
        """Bearing of an image column, radians, positive = left of the optical axis (ROS yaw convention)."""
        return math.atan2(self.cx_px - column_px, self.fx_px)

    def column_px(self, bearing_rad: float) -> float:
        """The image column of a bearing (inverse of :meth:`bearing_rad`)."""
        return self.cx_px - self.fx_px * math.tan(bearing_rad)

    def project(self, forward_m: float, left_m: float, up_m: float) -> tuple[float, float]:
        """Pixel (column, row) of a point in the camera frame: ``forward_m`` (> 0) along the optical axis, left, up.

        The column is :meth:`column_px` of the point's bearing; for the row, only horizontal intrinsics being
        known, pixels are square and the principal point is on the middle row.
        """
        return self.cx_px - self.fx_px * left_m / forward_m, self.height_px / 2.0 - self.fx_px * up_m / forward_m
