"""Camera model: the one place where a pixel becomes a bearing, and a point in the camera frame a pixel.

Shared by the follower (bearing of a box) and the simulator (projection of a target), so both agree on the
geometry by construction. The intrinsics are those of ``sensor_msgs/CameraInfo``'s K; lens distortion follows
its ``distortion_model`` with OpenCV's equations (``plumb_bob`` and ``rational_polynomial``: the standard model,
``equidistant``: the fisheye one). A wide-angle or fisheye lens moves a pixel at the image edge by tens of pixels,
a bearing error of up to ~20 deg through a plain pinhole, so a distorted pixel is undistorted (column and row:
with distortion the bearing depends on both) before its bearing is taken. Without distortion the pinhole
formulas are used as they are.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

# The ROS distortion models (sensor_msgs/distortion_models.hpp) and their number of coefficients in ``d``.
DISTORTION_COEFFICIENTS = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}
# Newton steps that polish OpenCV's undistortion: until the pixel is reprojected within this, or at most so many.
_UNDISTORT_TOLERANCE_PX = 1e-6
_UNDISTORT_STEPS = 20


@dataclass(frozen=True)
class PinholeCamera:
    """Image size, camera matrix (``fx``, ``fy``, ``cx``, ``cy``, pixels) and lens distortion of a camera.

    ``fy_px`` defaults to ``fx_px`` (square pixels) and ``cy_px`` to the middle row. ``distortion`` holds the
    coefficients of ``distortion_model`` (one of :data:`DISTORTION_COEFFICIENTS`, in CameraInfo's ``d`` order);
    coefficients that are all zero are no distortion whatever the model says, and are stored as ``("", ())``.
    ``ValueError`` names an unknown model or a wrong number of coefficients.
    """

    width_px: int
    height_px: int
    fx_px: float
    cx_px: float
    fy_px: float | None = None
    cy_px: float | None = None
    distortion_model: str = ""
    distortion: tuple[float, ...] = ()

    def __post_init__(self):
        # Frozen: the defaults are filled in, and zero coefficients dropped, once, here.
        if self.fy_px is None:
            object.__setattr__(self, "fy_px", self.fx_px)
        if self.cy_px is None:
            object.__setattr__(self, "cy_px", self.height_px / 2.0)
        coefficients = tuple(float(c) for c in self.distortion)
        if not any(coefficients):
            object.__setattr__(self, "distortion_model", "")
            object.__setattr__(self, "distortion", ())
            return
        expected = DISTORTION_COEFFICIENTS.get(self.distortion_model)
        if expected is None:
            raise ValueError(
                f"unknown distortion model {self.distortion_model!r} (known: {', '.join(DISTORTION_COEFFICIENTS)})"
            )
        if len(coefficients) != expected or not all(math.isfinite(c) for c in coefficients):
            raise ValueError(
                f"distortion model {self.distortion_model!r} takes {expected} finite coefficients, got "
                f"{len(coefficients)}: {list(coefficients)}"
            )
        object.__setattr__(self, "distortion", coefficients)

    @classmethod
    def from_hfov(cls, width_px: int, height_px: int, hfov_deg: float) -> PinholeCamera:
        """A centred, distortion-free camera whose horizontal field of view is ``hfov_deg`` (square pixels)."""
        fx = (width_px / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
        return cls(width_px, height_px, fx, width_px / 2.0)

    def bearing_rad(self, column_px: float, row_px: float) -> float:
        """Bearing of a pixel, radians, positive = left of the optical axis (ROS yaw convention).

        The angle about the camera's vertical axis between the optical axis and the pixel's ray; without distortion
        it depends on the column only.
        """
        if not self.distortion:
            return math.atan2(self.cx_px - column_px, self.fx_px)
        x, _ = self._undistort(column_px, row_px)
        return math.atan2(-x, 1.0)

    def turned_column_px(self, column_px: float, row_px: float, yaw_rad: float) -> float:
        """The column where the point seen at pixel (column, row) appears once the camera turned ``yaw_rad`` left.

        Its bearing decreases by ``yaw_rad``; with distortion its row moves too, which changes the column.
        """
        if not self.distortion:
            return self.cx_px - self.fx_px * math.tan(self.bearing_rad(column_px, row_px) - yaw_rad)
        if yaw_rad == 0.0:  # no turn moves nothing: skip the iterative round trip and its residue
            return column_px
        x, y = self._undistort(column_px, row_px)
        bearing = math.atan2(-x, 1.0) - yaw_rad
        # Turning about the vertical axis keeps the ray's height (y) and its horizontal length hypot(x, 1).
        return self._distort(-math.tan(bearing), y / (math.hypot(x, 1.0) * math.cos(bearing)))[0]

    def project(self, forward_m: float, left_m: float, up_m: float) -> tuple[float, float]:
        """Pixel (column, row) of a point in the camera frame: ``forward_m`` (> 0) along the optical axis, left, up."""
        if self.distortion:
            return self._distort(-left_m / forward_m, -up_m / forward_m)
        return self.cx_px - self.fx_px * left_m / forward_m, self.cy_px - self.fy_px * up_m / forward_m

    @functools.cached_property
    def _matrix(self) -> np.ndarray:
        # Built once: an undistortion projects a point a dozen times, every control tick.
        return np.array([[self.fx_px, 0.0, self.cx_px], [0.0, self.fy_px, self.cy_px], [0.0, 0.0, 1.0]])

    @functools.cached_property
    def _coefficients(self) -> np.ndarray:
        return np.array(self.distortion)

    def _undistort(self, column_px: float, row_px: float) -> tuple[float, float]:
        """Normalised image coordinates (x right, y down, at unit depth) of a distorted pixel.

        OpenCV's undistortion is only the start: its fixed-point iteration leaves ~0.3 deg at a strong wide-angle
        lens's edge after its default 5 steps, and OpenCV 4 (Ubuntu's python3-opencv) gives up at the corners
        and returns the distorted point. Newton steps on OpenCV's own projection (:meth:`_distort`) then solve it
        to a millionth of a pixel, the same on every OpenCV version.
        """
        pixel = np.array([[[column_px, row_px]]], np.float64)
        undistort = cv2.fisheye.undistortPoints if self.distortion_model == "equidistant" else cv2.undistortPoints
        point = start = undistort(pixel, self._matrix, self._coefficients).reshape(2)
        target, step = np.array([column_px, row_px]), 1e-7
        for _ in range(_UNDISTORT_STEPS):
            error = np.array(self._distort(*point)) - target
            if np.abs(error).max() < _UNDISTORT_TOLERANCE_PX:
                break
            # The 2x2 Jacobian by forward differences: OpenCV's projection Jacobians are laid out differently for
            # the two lens models, and two more projections of one point cost microseconds.
            jacobian = np.stack(
                [(np.array(self._distort(*(point + step * unit))) - target - error) / step for unit in np.eye(2)],
                axis=1,
            )
            try:
                point = point - np.linalg.solve(jacobian, error)
            except np.linalg.LinAlgError:  # a pixel past the lens model's fold (no ray maps to it): stop there
                break
        if not np.isfinite(point).all():
            point = start
        return float(point[0]), float(point[1])

    def _distort(self, x: float, y: float) -> tuple[float, float]:
        """The pixel of normalised image coordinates (x right, y down, at unit depth), lens distortion applied."""
        point, zero = np.array([[[x, y, 1.0]]], np.float64), np.zeros(3)
        project = cv2.fisheye.projectPoints if self.distortion_model == "equidistant" else cv2.projectPoints
        pixel, _ = project(point, zero, zero, self._matrix, self._coefficients)
        column, row = pixel.reshape(2)
        return float(column), float(row)
