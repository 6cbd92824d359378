"""Settings declared once: a dataclass field carries its default, description, limits and mutability.

The core's parameter dataclasses (``FollowParams``, ``SimParams``) define their fields with
:func:`setting`; :func:`check_settings` validates an instance against that metadata, and the ROS
nodes generate their parameter declarations (description, range, read-only) from the same fields
(``ssd_ros.ros.params.dataclass_table``). Adding a parameter therefore touches one place.
"""

from __future__ import annotations

import math
from dataclasses import field, fields


def setting(
    default,
    description: str,
    *,
    limits: tuple[float, float] | None = None,
    choices: tuple[str, ...] | None = None,
    read_only: bool = False,
):
    """A dataclass field with its documentation.

    Args:
        default: the default value (its type is the parameter's type).
        description: one line for ``--help``, the node's parameter descriptor and the docs.
        limits: inclusive ``(low, high)`` range of a number.
        choices: the allowed values of a string.
        read_only: on a robot, only settable at start-up: it bounds speed, a timeout or a calibration,
            which nobody on the DDS domain may change at runtime.
    """
    if choices is not None:
        description = f"{description} (one of: {', '.join(choices)})"
    metadata = {"description": description, "limits": limits, "choices": choices, "read_only": read_only}
    return field(default=default, metadata=metadata)


def check_settings(obj) -> None:
    """Raise ``ValueError`` naming the first field of ``obj`` that is non-finite, out of limits or no choice."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be finite, got {value}")
        limits, choices = f.metadata.get("limits"), f.metadata.get("choices")
        if limits is not None and not limits[0] <= value <= limits[1]:
            raise ValueError(f"{f.name} must be in [{limits[0]:g}, {limits[1]:g}], got {value}")
        if choices is not None and value not in choices:
            raise ValueError(f"{f.name} must be one of {choices}, got {value!r}")
