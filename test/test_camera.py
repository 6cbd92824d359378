"""The camera model against OpenCV's own projection: bearings of distorted pixels, the pinhole case unchanged."""

import math

import cv2
import numpy as np
import pytest

from ssd_ros.control.camera import PinholeCamera

# A wide-angle Pi camera at 640x480 as camera_calibration reports it (barrel distortion, k1 = -0.3).
PLUMB_BOB = PinholeCamera(640, 480, 330.0, 322.5, 328.0, 241.0, "plumb_bob", (-0.3, 0.09, 0.001, -0.0005, -0.012))
# The same kind of lens through camera_calibration's 8-coefficient model.
RATIONAL = PinholeCamera(
    640, 480, 330.0, 318.0, 331.0, 236.5, "rational_polynomial", (0.2, 0.01, 0.0008, 0.0004, 0.0, 0.5, 0.05, 0.0)
)
# A fisheye (about 160 deg across the image width).
FISHEYE = PinholeCamera(640, 480, 230.0, 320.0, 230.0, 240.0, "equidistant", (0.05, -0.01, 0.002, -0.0005))
DISTORTED = [PLUMB_BOB, RATIONAL, FISHEYE]
IDS = ["plumb_bob", "rational_polynomial", "equidistant"]


def opencv_pixel(camera: PinholeCamera, direction) -> tuple[float, float]:
    """Ground truth: the pixel of a direction (x right, y down, z forward) by OpenCV's projection of the model."""
    k = np.array([[camera.fx_px, 0.0, camera.cx_px], [0.0, camera.fy_px, camera.cy_px], [0.0, 0.0, 1.0]])
    point, zero, d = np.array([[direction]], np.float64), np.zeros(3), np.array(camera.distortion)
    project = cv2.fisheye.projectPoints if camera.distortion_model == "equidistant" else cv2.projectPoints
    pixel, _ = project(point, zero, zero, k, d)
    return tuple(float(c) for c in pixel.reshape(2))


def direction(bearing_rad: float, down: float) -> tuple[float, float, float]:
    """A direction at ``bearing_rad`` (positive left), ``down`` below the horizontal plane per unit of distance."""
    return (-math.sin(bearing_rad), down, math.cos(bearing_rad))


def pinhole_bearing(camera: PinholeCamera, column_px: float) -> float:
    """The bearing the follower took before distortion was modelled."""
    return math.atan2(camera.cx_px - column_px, camera.fx_px)


def edge_bearings(camera: PinholeCamera) -> list[float]:
    """Bearings from the axis out to each side, while their pixels (on every tested row) are inside the image.

    Farther out a polynomial lens model folds back (a barrel's direction at 70 deg lands inside the image again),
    where no calibration describes the lens.
    """
    bearings = []
    for side in (1, -1):
        for degrees in range(90):
            pixels = [opencv_pixel(camera, direction(side * math.radians(degrees), down)) for down in (-0.4, 0.0, 0.3)]
            if not all(0 <= u <= camera.width_px and 0 <= v <= camera.height_px for u, v in pixels):
                break
            bearings.append(side * math.radians(degrees))
    return bearings


@pytest.mark.parametrize("camera", DISTORTED, ids=IDS)
def test_the_bearing_of_a_distorted_pixel_is_its_directions(camera):
    pinhole_errors = []
    for bearing in edge_bearings(camera):
        for down in (-0.4, 0.0, 0.3):  # above, on and below the optical axis: the row matters too
            u, v = opencv_pixel(camera, direction(bearing, down))
            assert camera.bearing_rad(u, v) == pytest.approx(bearing, abs=math.radians(0.001))
            pinhole_errors.append(abs(pinhole_bearing(camera, u) - bearing))
    # What it fixes: the pinhole bearing of the same pixels is off by degrees towards the edge.
    assert math.degrees(max(pinhole_errors)) > (15.0 if camera is FISHEYE else 5.0)


def test_with_distortion_the_bearing_of_a_column_depends_on_its_row():
    column = 60.0
    top, middle = PLUMB_BOB.bearing_rad(column, 20.0), PLUMB_BOB.bearing_rad(column, PLUMB_BOB.cy_px)
    assert math.degrees(top - middle) > 2.0  # barrel: a corner pixel lies farther out than an edge pixel


@pytest.mark.parametrize("camera", DISTORTED, ids=IDS)
def test_the_column_after_a_turn_is_where_the_turned_camera_sees_the_point(camera):
    for bearing, down, yaw in [(0.5, 0.3, 0.1), (-0.3, -0.2, -0.15), (0.1, 0.0, 0.4), (-0.6, 0.25, -0.05)]:
        u, v = opencv_pixel(camera, direction(bearing, down))
        expected = opencv_pixel(camera, direction(bearing - yaw, down))[0]
        assert camera.turned_column_px(u, v, yaw) == pytest.approx(expected, abs=1e-5)
        assert camera.turned_column_px(u, v, 0.0) == u  # no turn, no shift, exactly
    # The pinhole shift of the first point would miss by pixels.
    u, v = opencv_pixel(camera, direction(0.5, 0.3))
    pinhole = camera.cx_px - camera.fx_px * math.tan(pinhole_bearing(camera, u) - 0.1)
    assert abs(pinhole - opencv_pixel(camera, direction(0.4, 0.3))[0]) > 2.0


@pytest.mark.parametrize("camera", DISTORTED, ids=IDS)
def test_project_applies_the_distortion(camera):
    forward, left, up = 3.0, 1.2, -0.4
    assert camera.project(forward, left, up) == pytest.approx(opencv_pixel(camera, (-left, -up, forward)), abs=1e-9)


def test_without_distortion_the_formulas_are_the_pinhole_ones_exactly():
    """The simulator projects with the pinhole model: the follower's bearing must stay the very same numbers."""
    plain = PinholeCamera(640, 480, 500.0, 310.0)
    zeros = PinholeCamera(640, 480, 500.0, 310.0, 500.0, 240.0, "plumb_bob", (0.0,) * 5)
    assert zeros == plain and plain.distortion == () and (plain.fy_px, plain.cy_px) == (500.0, 240.0)
    for u, v in [(0.0, 0.0), (123.4, 400.0), (310.0, 17.0), (640.0, 480.0)]:
        assert plain.bearing_rad(u, v) == math.atan2(310.0 - u, 500.0)
        expected = 310.0 - 500.0 * math.tan(math.atan2(310.0 - u, 500.0) - 0.2)
        assert plain.turned_column_px(u, v, 0.2) == expected
    assert plain.project(4.0, 1.0, 0.5) == (310.0 - 500.0 * 1.0 / 4.0, 240.0 - 500.0 * 0.5 / 4.0)


@pytest.mark.parametrize(
    "model,coefficients,message",
    [
        (
            "fisheye",
            (0.1, 0.0, 0.0, 0.0),
            "unknown distortion model 'fisheye' \\(known: plumb_bob, rational_polynomial",
        ),
        ("", (-0.3, 0.1, 0.0, 0.0, 0.0), "unknown distortion model ''"),
        ("plumb_bob", (-0.3, 0.1, 0.0, 0.0), "distortion model 'plumb_bob' takes 5 finite coefficients, got 4"),
        ("rational_polynomial", (-0.3,) * 5, "'rational_polynomial' takes 8 finite coefficients, got 5"),
        ("equidistant", (0.05,) * 5, "'equidistant' takes 4 finite coefficients, got 5"),
        ("plumb_bob", (-0.3, math.nan, 0.0, 0.0, 0.0), "'plumb_bob' takes 5 finite coefficients, got 5: \\[-0.3, nan"),
    ],
)
def test_an_unknown_model_or_a_wrong_number_of_coefficients_is_named(model, coefficients, message):
    with pytest.raises(ValueError, match=message):
        PinholeCamera(640, 480, 330.0, 320.0, 330.0, 240.0, model, coefficients)


def test_zero_coefficients_are_no_distortion_whatever_the_model():
    """A driver without a lens model publishes zeros (or nothing) under any name: no reason to refuse it."""
    plain = PinholeCamera(640, 480, 330.0, 320.0)
    for model, coefficients in [("", ()), ("", (0.0,) * 5), ("equidistant", (0.0,) * 5), ("unknown", (0.0,))]:
        assert PinholeCamera(640, 480, 330.0, 320.0, None, None, model, coefficients) == plain
