"""Parameter tables: types follow the defaults and rclpy enforces the declared ranges on a real node; settings
dataclasses read from mappings (node values, parameter files, command-line options)."""

from dataclasses import replace

import pytest
from conftest import RosProbe
from rcl_interfaces.msg import ParameterType as PT
from rclpy.parameter import Parameter

from ssd_ros.control.tracking import TrackerParams
from ssd_ros.ros.params import STRING_ARRAY, declare_all, param
from ssd_ros.settings import settings_from_mapping
from ssd_ros.simulation.simulator import SimParams


@pytest.fixture
def ros_node():
    with RosProbe("params_test") as probe:
        yield probe.node


def test_types_follow_the_defaults(ros_node):
    table = {
        "flag": param(True, "b"),  # not an integer, although bool is an int
        "count": param(3, "i"),
        "rate": param(0.5, "d"),
        "name": param("x", "s"),
        "classes": param(("person",), "a"),
        "filter": param(STRING_ARRAY, "unset string array"),
    }
    declare_all(ros_node, table)
    types = {name: ros_node.describe_parameter(name).type for name in table}
    assert types == {
        "flag": PT.PARAMETER_BOOL,
        "count": PT.PARAMETER_INTEGER,
        "rate": PT.PARAMETER_DOUBLE,
        "name": PT.PARAMETER_STRING,
        "classes": PT.PARAMETER_STRING_ARRAY,
        "filter": PT.PARAMETER_STRING_ARRAY,
    }
    assert ros_node.get_parameter("classes").value == ["person"]
    with pytest.raises(TypeError, match="limits need an int or float"):
        param("x", "s", limits=(0, 1))
    with pytest.raises(TypeError, match="limits need an int or float"):
        param(True, "b", limits=(0, 1))


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


def test_any_settings_dataclass_reads_from_a_mapping_converted_and_validated():
    tracker = settings_from_mapping(TrackerParams, {"track_min_hits": 3.0, "track_high_score": "0.6", "other": 1})
    assert tracker == TrackerParams(track_min_hits=3, track_high_score=0.6)
    assert isinstance(tracker.track_min_hits, int)
    # From an instance: its values are the base (a runtime change of some parameters).
    assert settings_from_mapping(tracker, {"track_low_score": 0.2}) == replace(tracker, track_low_score=0.2)
    with pytest.raises(ValueError, match="track_low_score must be <= track_high_score"):  # TrackerParams.check
        settings_from_mapping(TrackerParams, {"track_low_score": 0.9})
    with pytest.raises(ValueError, match="track_min_hits must be an integer, got 'many'"):
        settings_from_mapping(TrackerParams, {"track_min_hits": "many"})
    with pytest.raises(ValueError, match="track_min_hits must be an integer, got inf"):
        settings_from_mapping(TrackerParams, {"track_min_hits": float("inf")})
    # Every settings class is validated as it is made, SimParams too (it once never was).
    with pytest.raises(ValueError, match=r"miss_probability must be in \[0, 1\]"):
        SimParams(miss_probability=2)
    assert settings_from_mapping(SimParams, {"image_width": 320}).camera.width_px == 320
    with pytest.raises(ValueError, match=r"miss_probability must be in \[0, 1\]"):
        settings_from_mapping(SimParams, {"miss_probability": 2})
    with pytest.raises(ValueError, match="camera_height_m must be finite"):
        settings_from_mapping(SimParams, {"camera_height_m": float("nan")})


def test_every_settings_class_is_validated_as_it_is_made():
    """One way for all: a value out of its field's limits is refused by the constructor, naming the field."""
    from ssd_ros.control.follow import FollowerSettings, FollowParams
    from ssd_ros.control.geometry import RoverGeometry
    from ssd_ros.rover.picar_base import Calibration, HardwareSettings
    from ssd_ros.vision.detector import DetectorSettings

    for settings_class, name, value in [
        (RoverGeometry, "wheelbase_m", 0.0),
        (FollowParams, "max_steering_deg", 80.0),  # the geometry's limits, whichever class extends it
        (SimParams, "max_steering_deg", 80.0),
        (Calibration, "max_steering_deg", 80.0),
        (FollowerSettings, "rate_hz", 0.0),
        (TrackerParams, "track_min_hits", 0),
        (HardwareSettings, "steering_channel", 16),
        (DetectorSettings, "nms_iou", 1.5),
    ]:
        with pytest.raises(ValueError, match=f"{name} must be in"):
            settings_class(**{name: value})


def test_the_rover_file_and_a_node_file_are_read_in_order(tmp_path):
    """tune_follower --params / bag_eval --follow-config: rover.yaml then the node's file, the later one winning."""
    from ssd_ros.cli import read_params_files
    from ssd_ros.control.follow import FollowParams

    rover, own = tmp_path / "rover.yaml", tmp_path / "follower.yaml"
    rover.write_text("/**:\n  ros__parameters:\n    wheelbase_m: 0.2\n    image_width: 320\n")
    own.write_text("/**:\n  ros__parameters:\n    image_width: 800\n    max_linear_mps: 0.2\n")
    params = settings_from_mapping(FollowParams, read_params_files([rover, own], "follower"))
    assert (params.wheelbase_m, params.image_width, params.max_linear_mps) == (0.2, 800, 0.2)
