"""Parameter tables: ``name -> (default, ParameterDescriptor)``, typed and range-checked by rclpy itself.

Reading a node's parameters file offline (without rclpy) is :func:`ssd_ros.cli.read_params_file`.
"""

from __future__ import annotations

from dataclasses import fields

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

ParameterTable = dict[str, tuple[object, ParameterDescriptor]]

# An empty list default would be declared as a byte array; a typed, unset parameter is declared instead.
STRING_ARRAY = Parameter.Type.STRING_ARRAY


def param(
    default: object,
    description: str,
    *,
    limits: tuple[float, float] | None = None,
    read_only: bool = False,
) -> tuple[object, ParameterDescriptor]:
    """One table entry; ``limits`` is an inclusive range for an int or float parameter.

    rclpy types the parameter from ``default`` and rejects a value of another type or outside ``limits``
    with a reason, at start-up and at runtime.
    """
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    if limits is not None:
        low, high = limits
        if isinstance(default, bool) or not isinstance(default, int | float):
            raise TypeError(f"limits need an int or float parameter, not {type(default).__name__}")
        if isinstance(default, int):
            descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=1)]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high))]
    return (list(default) if isinstance(default, tuple) else default), descriptor


def declare_all(node: Node, table: ParameterTable) -> dict[str, object]:
    """Declare every parameter of ``table`` on ``node`` and return their start-up values by name."""
    return {
        name: node.declare_parameter(name, default, descriptor).value for name, (default, descriptor) in table.items()
    }


def dataclass_table(settings_class, *, read_only: bool = False) -> ParameterTable:
    """The table of a core settings dataclass, its fields made with :func:`ssd_ros.settings.setting`.

    Description, limits and read-only come from the field metadata; ``read_only`` makes every
    parameter read-only (a node that reads them only at start-up). An empty tuple default is an unset string
    array (see ``STRING_ARRAY``).
    """
    table = {}
    for f in fields(settings_class):
        meta = f.metadata
        default = STRING_ARRAY if f.default == () else f.default
        table[f.name] = param(
            default, meta["description"], limits=meta["limits"], read_only=read_only or meta["read_only"]
        )
    return table
