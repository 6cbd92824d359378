"""Parameter tables: ``name -> (default, ParameterDescriptor)``, typed and range-checked by rclpy itself."""

from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rcl_interfaces.msg import ParameterType as PT
from rclpy.node import Node
from rclpy.parameter import Parameter

ParameterTable = dict[str, tuple[object, ParameterDescriptor]]

# An empty list default would be declared as a byte array; a typed, unset parameter is declared instead.
STRING_ARRAY = Parameter.Type.STRING_ARRAY

_TYPES = {bool: PT.PARAMETER_BOOL, int: PT.PARAMETER_INTEGER, float: PT.PARAMETER_DOUBLE, str: PT.PARAMETER_STRING}


def param(
    default: object,
    description: str,
    *,
    limits: tuple[float, float] | None = None,
    read_only: bool = False,
) -> tuple[object, ParameterDescriptor]:
    """One table entry; the parameter type follows ``default`` and ``limits`` is an inclusive range.

    rclpy then rejects a value of another type or outside ``limits`` with a reason, at start-up and at runtime.
    """
    if default is STRING_ARRAY:
        type_ = PT.PARAMETER_STRING_ARRAY
    elif isinstance(default, (list, tuple)) and default and all(isinstance(item, str) for item in default):
        default, type_ = list(default), PT.PARAMETER_STRING_ARRAY
    else:
        type_ = _TYPES[type(default)]
    descriptor = ParameterDescriptor(description=description, type=type_, read_only=read_only)
    if limits is not None:
        low, high = limits
        if type_ == PT.PARAMETER_INTEGER:
            descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=1)]
        elif type_ == PT.PARAMETER_DOUBLE:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high))]
        else:
            raise TypeError(f"limits need an int or float parameter, not {type(default).__name__}")
    return default, descriptor


def declare_all(node: Node, table: ParameterTable) -> dict[str, object]:
    """Declare every parameter of ``table`` on ``node`` and return their start-up values by name."""
    return {
        name: node.declare_parameter(name, default, descriptor).value for name, (default, descriptor) in table.items()
    }
