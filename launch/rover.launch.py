"""Bring up the PiCar-B rover: camera, SSD detector, follower, base driver and (optionally) RViz.

    ros2 launch ssd_ros rover.launch.py model_path:=/path/to/ssd300_voc.pt target_class:=person
    ros2 launch ssd_ros rover.launch.py --show-args

Every node reads its parameters from ``share/ssd_ros/config/<node>.yaml``; the arguments below override
the few that change from run to run. The base driver runs on simulated hardware unless ``base:=picar_b``,
so nothing moves by accident. For a split deployment (camera and base on the Pi, detector and follower on
a laptop) start this file on both machines with different switches; see docs/picar_b.md.
"""

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node, PushRosNamespace

PACKAGE = "ssd_ros"

ARGUMENTS = [
    DeclareLaunchArgument(
        "model_path",
        default_value="",
        description="SSD checkpoint (.pt) for the detector; empty keeps model_path from config/detector.yaml",
    ),
    DeclareLaunchArgument("device", default_value="auto", description="detector inference device: auto | cpu | cuda"),
    DeclareLaunchArgument(
        "target_class",
        default_value="person",
        description="class name(s) the follower follows, comma separated (e.g. person or person,dog)",
    ),
    DeclareLaunchArgument(
        "image_topic",
        default_value="camera/image_raw",
        description="image topic the detector reads (relative names follow the namespace argument)",
    ),
    DeclareLaunchArgument(
        "compressed",
        default_value="false",
        description="detector subscribes <image_topic>/compressed (sensor_msgs/CompressedImage): use over Wi-Fi",
    ),
    DeclareLaunchArgument(
        "camera",
        default_value="none",
        description="camera driver to start: none | camera_ros (libcamera, Pi camera) | v4l2_camera (USB/V4L2); "
        "skipped with a message when the package is not installed",
    ),
    DeclareLaunchArgument(
        "base",
        default_value="sim",
        description="base driver: picar_b (real PCA9685 servo + motor: the car moves) | sim (simulated chip) | none",
    ),
    DeclareLaunchArgument(
        "detector", default_value="true", description="start the SSD detector node (false on the Pi in a split set-up)"
    ),
    DeclareLaunchArgument(
        "follower", default_value="true", description="start the follower node that turns detections into cmd_vel"
    ),
    DeclareLaunchArgument(
        "twist_stamped",
        default_value="false",
        description="cmd_vel as geometry_msgs/TwistStamped instead of Twist (follower and base driver together)",
    ),
    DeclareLaunchArgument("rviz", default_value="false", description="start RViz with config/rover.rviz"),
    DeclareLaunchArgument(
        "namespace", default_value="", description="ROS namespace for every node (e.g. picar1 for several cars)"
    ),
    DeclareLaunchArgument(
        "use_sim_time", default_value="false", description="use /clock (bag replay or simulation) as ROS time"
    ),
]

# Camera drivers: the node publishes <namespace>/camera/image_raw (and .../compressed), 640x480.
CAMERAS = ("camera_ros", "v4l2_camera")
BASES = ("picar_b", "sim", "none")


def _flag(context, name: str) -> bool:
    text = LaunchConfiguration(name).perform(context).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"launch argument {name}:={text!r} is not a boolean (true/false)")


def _choice(context, name: str, choices: tuple[str, ...]) -> str:
    value = LaunchConfiguration(name).perform(context).strip()
    if value not in choices:
        raise ValueError(f"launch argument {name}:={value!r} must be one of {', '.join(choices)}")
    return value


def _installed(package: str) -> bool:
    try:
        get_package_share_directory(package)
    except PackageNotFoundError:
        return False
    return True


def _config(name: str) -> str:
    return f"{get_package_share_directory(PACKAGE)}/config/{name}"


def _launch_setup(context):
    """Build the node list from the evaluated arguments (OpaqueFunction: checks installed packages)."""
    use_sim_time = _flag(context, "use_sim_time")
    stamped = _flag(context, "twist_stamped")
    camera = _choice(context, "camera", ("none", *CAMERAS))
    base = _choice(context, "base", BASES)
    namespace = LaunchConfiguration("namespace").perform(context).strip()
    actions = []

    if camera != "none" and not _installed(camera):
        actions.append(LogInfo(msg=f"camera:={camera} requested but the package is not installed: no camera started"))
    elif camera == "camera_ros":
        actions.append(
            Node(
                package="camera_ros",
                executable="camera_node",
                name="camera",
                parameters=[{"width": 640, "height": 480, "use_sim_time": use_sim_time}],
            )
        )
    elif camera == "v4l2_camera":
        actions.append(
            Node(
                package="v4l2_camera",
                executable="v4l2_camera_node",
                name="camera",
                parameters=[{"image_size": [640, 480], "use_sim_time": use_sim_time}],
                remappings=[("image_raw", "camera/image_raw"), ("camera_info", "camera/camera_info")],
            )
        )

    if _flag(context, "detector"):
        overrides = {
            "device": LaunchConfiguration("device").perform(context),
            "image_topic": LaunchConfiguration("image_topic").perform(context),
            "compressed": _flag(context, "compressed"),
            "use_sim_time": use_sim_time,
        }
        model_path = LaunchConfiguration("model_path").perform(context)
        if model_path:
            overrides["model_path"] = model_path
        actions.append(
            Node(
                package=PACKAGE,
                executable="detector",
                name="detector",
                parameters=[_config("detector.yaml"), overrides],
                output="screen",
            )
        )

    if _flag(context, "follower"):
        target_classes = [name.strip() for name in LaunchConfiguration("target_class").perform(context).split(",")]
        actions.append(
            Node(
                package=PACKAGE,
                executable="follower",
                name="follower",
                parameters=[
                    _config("follower.yaml"),
                    {
                        "target_classes": [name for name in target_classes if name],
                        "twist_stamped": stamped,
                        "use_sim_time": use_sim_time,
                    },
                ],
                output="screen",
            )
        )

    if base != "none":
        actions.append(
            Node(
                package=PACKAGE,
                executable="picar_base",
                name="picar_base",
                parameters=[
                    _config("picar_base.yaml"),
                    {"hardware": base, "twist_stamped": stamped, "use_sim_time": use_sim_time},
                ],
                output="screen",
            )
        )

    if _flag(context, "rviz"):
        actions.append(
            Node(
                package="rviz2",
                executable="rviz2",
                name="rviz2",
                arguments=["-d", _config("rover.rviz")],
                parameters=[{"use_sim_time": use_sim_time}],
            )
        )
    # A scoped group so the namespace applies to these nodes only.
    return [GroupAction([PushRosNamespace(namespace), *actions])] if namespace else actions


def generate_launch_description():
    """Arguments plus one OpaqueFunction that starts the selected nodes."""
    return LaunchDescription([*ARGUMENTS, OpaqueFunction(function=_launch_setup)])
