"""Ackermann (bicycle-model) kinematics shared by the follower, the simulator and the base driver.

A car-like robot cannot turn in place: a yaw rate ``omega`` at speed ``v`` needs the front-wheel
steering angle ``atan(wheelbase * omega / v)``, limited by the servo's travel. These functions are
the single place where that relation lives.
"""

from __future__ import annotations

import math


def steering_angle(linear_mps: float, angular_radps: float, wheelbase_m: float, max_steering_rad: float) -> float:
    """Front-wheel angle (rad, positive = left) realising ``angular_radps`` at ``linear_mps``, clamped.

    At (near) zero speed no steering angle produces a yaw rate, so the wheels stay where the
    caller wants them: we return 0 (centre) rather than a spurious full lock. Reversing flips the
    sign relation, which ``atan`` of the signed ratio already gives.
    """
    if not (math.isfinite(linear_mps) and math.isfinite(angular_radps)) or abs(linear_mps) < 1e-6:
        return 0.0
    angle = math.atan(wheelbase_m * angular_radps / linear_mps)
    return max(-max_steering_rad, min(max_steering_rad, angle))


def yaw_rate(linear_mps: float, steering_rad: float, wheelbase_m: float) -> float:
    """Yaw rate (rad/s) of the bicycle model at ``linear_mps`` with front-wheel angle ``steering_rad``."""
    return linear_mps * math.tan(steering_rad) / wheelbase_m


def limit_angular(linear_mps: float, angular_radps: float, wheelbase_m: float, max_steering_rad: float) -> float:
    """The yaw rate closest to ``angular_radps`` that the car can actually drive at ``linear_mps``.

    Equivalent to respecting the minimum turning radius ``wheelbase / tan(max_steering)``;
    zero speed gives zero rotation (no turning in place).
    """
    return yaw_rate(linear_mps, steering_angle(linear_mps, angular_radps, wheelbase_m, max_steering_rad), wheelbase_m)
