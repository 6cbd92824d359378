"""Settings declared once: a dataclass field carries its default, description, limits and mutability.

The core's parameter dataclasses (``RoverGeometry`` and the classes that extend it, ``FollowParams``,
``SimParams`` and the base driver's ``Calibration``; ``FollowerSettings``, ``TrackerParams``,
``DetectorSettings``, the base driver's ``HardwareSettings``) subclass :class:`Settings` and define their
fields with :func:`setting`. Every instance is validated when it is made (:meth:`Settings.__post_init__`:
:func:`check_settings` against the metadata, then the class's own cross-field rules), so an invalid one
never exists; the ROS nodes generate their
parameter declarations (description, range, read-only) from the same fields
(``ssd_ros.ros.params.dataclass_table``), and :func:`settings_from_mapping` reads an instance from a
node's parameter values, a parameters file or command-line options. Adding a parameter therefore
touches one place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import field, fields, replace


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


class Settings:
    """Base of the settings dataclasses: an instance is validated when it is made, one way for all of them.

    ``__post_init__`` checks every field against its metadata (:func:`check_settings`) and then calls
    :meth:`check`, where a class states the rules between its fields. ``ValueError`` names the first bad one.
    """

    def __post_init__(self):
        """Validate the new instance (see the class docstring)."""
        check_settings(self)
        self.check()

    def check(self) -> None:
        """Rules between fields (``ValueError`` naming the field); none unless a subclass has some."""


# How a value of the type of a field's default is named in an error.
KIND_NAMES = {int: "an integer", float: "a number", str: "a string", tuple: "a list of strings"}


def settings_from_mapping(base, mapping: Mapping[str, object]):
    """Validated settings: ``base`` (a settings dataclass for its defaults, or an instance) updated from ``mapping``.

    Only the keys that name a field are used; the others (a node's own parameters in the same YAML) are
    ignored. Each value is converted to the type of the field's default: a sequence (or one string) to a tuple
    of strings (``None``, a string array parameter nobody set, to an empty one), a number to int or float; a
    bool must be a bool. The result is validated as it is made
    (:class:`Settings`). Raises ``ValueError`` naming the bad key.
    """
    if isinstance(base, type):
        base = base()
    changes = {
        f.name: _convert(f.name, mapping[f.name], type(getattr(base, f.name)))
        for f in fields(base)
        if f.name in mapping
    }
    return replace(base, **changes)


def _convert(name: str, value, kind: type):
    """``value`` as a ``kind`` (the type of field ``name``'s default); ``ValueError`` naming ``name`` if it is none."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a bool, got {value!r}")
        return value
    try:
        if kind is tuple:
            if value is None:
                return ()
            return (value,) if isinstance(value, str) else tuple(str(v) for v in value)
        return kind(value)
    except (TypeError, ValueError, OverflowError):  # int(inf) overflows
        raise ValueError(f"{name} must be {KIND_NAMES.get(kind, kind.__name__)}, got {value!r}") from None
