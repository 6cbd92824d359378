"""Parameter tables: types follow the defaults and rclpy enforces the declared ranges on a real node."""

import pytest
import rclpy
from rcl_interfaces.msg import ParameterType as PT
from rclpy.context import Context
from rclpy.parameter import Parameter

from ssd_ros.ros.params import STRING_ARRAY, declare_all, param


@pytest.fixture
def ros_node():
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("params_test", context=context)
    yield node
    node.destroy_node()
    rclpy.shutdown(context=context)


def test_types_follow_the_defaults():
    assert param(True, "b")[1].type == PT.PARAMETER_BOOL  # not an integer, although bool is an int
    assert param(3, "i")[1].type == PT.PARAMETER_INTEGER
    assert param(0.5, "d")[1].type == PT.PARAMETER_DOUBLE
    assert param("x", "s")[1].type == PT.PARAMETER_STRING
    assert param(("person",), "a") == (["person"], param(["person"], "a")[1])
    assert param(STRING_ARRAY, "a")[1].type == PT.PARAMETER_STRING_ARRAY
    with pytest.raises(TypeError, match="limits need an int or float"):
        param("x", "s", limits=(0, 1))


def test_declared_ranges_are_enforced_by_rclpy(ros_node):
    table = {
        "rate": param(2.0, "a rate", limits=(1.0, 10.0)),
        "count": param(3, "a count", limits=(1, 5), read_only=True),
    }
    assert declare_all(ros_node, table) == {"rate": 2.0, "count": 3}
    assert ros_node.set_parameters([Parameter("rate", value=20.0)])[0].successful is False
    assert ros_node.set_parameters([Parameter("rate", value=5.0)])[0].successful is True
    assert ros_node.set_parameters([Parameter("count", value=4)])[0].successful is False  # read-only
    assert ros_node.get_parameter("rate").value == 5.0 and ros_node.get_parameter("count").value == 3
