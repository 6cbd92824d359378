"""Bring up the PiCar-B rover: camera, SSD detector, follower, base driver and (optionally) RViz.

    ros2 launch ssd_ros rover.launch.py model_path:=/path/to/ssd300_voc.pt target_class:=person
    ros2 launch ssd_ros rover.launch.py --show-args

Every node reads its parameters from ``share/ssd_ros/config/<node>.yaml``; the arguments below override
the few that change from run to run. The base driver runs on simulated hardware unless ``base:=picar_b``,
so nothing moves by accident. For a split deployment (camera and base on the Pi, detector and follower on
a laptop) start this file on both machines with different switches; see docs/picar_b.md.

The launch starts all or nothing: a missing checkpoint, camera package or rviz2 is refused before any
process starts (one error line naming the argument), and every process it starts is required: when one
exits, the whole launch shuts down, so the motor driver never runs without the nodes that supervise it.
"""

import difflib
import os

from ament_index_python import get_package_share_directory, has_resource
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, OpaqueFunction, SetEnvironmentVariable, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node, PushRosNamespace

from ssd_ros.cli import EXECUTOR_ENV, EXECUTORS, read_params_file
from ssd_ros.vision.model_file import BACKEND_CHOICES, COCO_ARCHITECTURES, PRECISION_CHOICES, check_model_file

PACKAGE = "ssd_ros"

ARGUMENTS = [
    DeclareLaunchArgument(
        "model_path",
        default_value="",
        description="the detector's model: a checkpoint (.pt), an ONNX export (.onnx) or an OpenVINO IR (.xml, its "
        ".bin beside it); empty keeps the parameters file's (the launch refuses to start a detector without a model)",
    ),
    DeclareLaunchArgument(
        "coco_model",
        default_value="",
        description="use torchvision's COCO weights instead of model_path (80 classes, person among them): "
        "ssdlite320_mobilenet_v3 (Pi-sized) | ssd300_vgg16; empty uses model_path",
    ),
    DeclareLaunchArgument(
        "backend",
        default_value="",
        description="what runs the network: auto (from the file and the CPU) | torch | onnxruntime | openvino; "
        "empty keeps the parameters file's (auto)",
    ),
    DeclareLaunchArgument(
        "precision",
        default_value="",
        description="network arithmetic: auto (the file's and the CPU's: never slower or less faithful than fp32) | "
        "fp32 | bf16 | int8 (an int8 export); empty keeps the parameters file's (auto)",
    ),
    DeclareLaunchArgument(
        "num_threads",
        default_value="",
        description="CPU threads for the network, 0 = the backend's default (all cores); empty keeps the parameters "
        "file's",
    ),
    DeclareLaunchArgument(
        "detector_params",
        default_value="",
        description="a detector parameters file (ROS 2 format) applied over config/detector.yaml; the arguments "
        "given (not left empty) override both, device, image_topic, compressed, autostart and use_sim_time included",
    ),
    DeclareLaunchArgument(
        "device",
        default_value="",
        description="detector inference device: auto | cpu | cuda; empty keeps the parameters files' (auto)",
    ),
    DeclareLaunchArgument(
        "target_class",
        default_value="person",
        description="class name(s) the follower follows, comma separated (e.g. person or person,dog)",
    ),
    DeclareLaunchArgument(
        "image_topic",
        default_value="",
        description="image topic the detector reads (relative names follow the namespace argument); empty keeps "
        "detector_params', else camera/image_raw (where the camera drivers publish)",
    ),
    DeclareLaunchArgument(
        "compressed",
        default_value="",
        description="true: the detector subscribes <image_topic>/compressed (sensor_msgs/CompressedImage), for "
        "Wi-Fi; empty keeps the parameters files' (false)",
    ),
    DeclareLaunchArgument(
        "camera",
        default_value="none",
        description="camera driver to start: none | camera_ros (libcamera, Pi camera) | v4l2_camera (USB/V4L2); "
        "publishes camera/image_raw (+ /compressed); the launch refuses a driver that is not installed",
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
    DeclareLaunchArgument(
        "rviz",
        default_value="false",
        description="start RViz with config/rover.rviz (needs rviz2; closing RViz stops the launch)",
    ),
    DeclareLaunchArgument(
        "autostart",
        default_value="",
        description="true: detector and follower configure and activate themselves (lifecycle nodes); false: they "
        "wait unconfigured for a lifecycle manager (ros2 lifecycle set /detector configure, then activate); empty "
        "keeps the parameters files' (true)",
    ),
    DeclareLaunchArgument(
        "executor",
        default_value="",
        description="what spins the ssd_ros nodes: events (rclpy's EventsExecutor) | single (its "
        "SingleThreadedExecutor, should the events executor misbehave); empty keeps $SSD_ROS_EXECUTOR (unset: events)",
    ),
    DeclareLaunchArgument(
        "namespace", default_value="", description="ROS namespace for every node (e.g. picar1 for several cars)"
    ),
    DeclareLaunchArgument(
        "use_sim_time",
        default_value="",
        description="true: every node uses /clock (bag replay or simulation) as ROS time; empty: the detector keeps "
        "its parameters files' (false unless detector_params sets it), the other nodes use wall time",
    ),
]

# Where the camera drivers publish, relative to the namespace: the detector's image_topic unless an argument or
# detector_params names another (config/detector.yaml's image_raw suits the node run on its own).
CAMERA_IMAGE_TOPIC = "camera/image_raw"
# Camera drivers and the apt package that provides each. Both publish camera/image_raw,
# camera/image_raw/compressed and camera/camera_info (relative to the namespace argument), 640x480.
CAMERAS = {"camera_ros": "ros-jazzy-camera-ros", "v4l2_camera": "ros-jazzy-v4l2-camera"}
BASES = ("picar_b", "sim", "none")


class LaunchRefused(RuntimeError):
    """The arguments cannot give a working rover; raised before any process starts, with the fix."""


def _flag(context, name: str) -> bool:
    text = LaunchConfiguration(name).perform(context).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise LaunchRefused(f"launch argument {name}:={text!r} is not a boolean (true/false)")


def _given_flag(context, name: str) -> bool | None:
    """A boolean argument, or None where it is left empty: not given, so the parameters files' value stands."""
    return _flag(context, name) if _text(context, name) else None


def _choice(context, name: str, choices, *, empty_ok: bool = False) -> str:
    value = LaunchConfiguration(name).perform(context).strip()
    if value not in choices and not (empty_ok and not value):
        raise LaunchRefused(f"launch argument {name}:={value!r} must be one of {', '.join(choices)}")
    return value


def _config(name: str) -> str:
    return f"{get_package_share_directory(PACKAGE)}/config/{name}"


class NodeFailed(RuntimeError):
    """A launched process exited with an error; raised so the launch stops everything and exits non-zero."""


def _required(**node_arguments) -> Node:
    """A node whose exit (crash, refused start, closed window) shuts the whole launch down.

    Without this, a dead detector or follower leaves the base driver running unsupervised (its watchdog
    only stops the motor); with it, launch sends SIGINT to the others and each ends with its safe action.
    A node that exits with an error makes the launch exit non-zero, so a service manager sees the failure.
    """
    name = node_arguments["name"]

    def on_exit(event, context):
        if event.returncode != 0 and not context.is_shutdown:
            # launch's only way to a non-zero exit code: an exception, which also shuts every process down.
            raise NodeFailed(f"{name} exited with code {event.returncode}: stopping every rover process")
        return [Shutdown(reason=f"{name} exited: stopping every rover process")]

    return Node(on_exit=on_exit, **node_arguments)


def _check_argument_names(context) -> None:
    """Refuse a ``name:=value`` on the command line that this file does not declare (a typo would be ignored)."""
    declared = [argument.name for argument in ARGUMENTS]
    for text in context.argv:
        name, separator, _value = text.partition(":=")
        if separator and name not in declared:
            close = difflib.get_close_matches(name, declared, n=1)
            hint = f"did you mean {close[0]}?" if close else f"the arguments are: {', '.join(declared)}"
            raise LaunchRefused(f"unknown launch argument {name}:= ({hint})")


def _text(context, name: str) -> str:
    return LaunchConfiguration(name).perform(context).strip()


def _detector_parameters(context, namespace: str, use_sim_time: bool | None) -> tuple[list, dict]:
    """The detector's extra parameter files and overrides, refusing a model it could not run (before any start).

    config/detector.yaml comes first, then ``detector_params``, then the arguments given (an empty one keeps the
    files' value). The model is checked as the detector will load it (ssd_ros.vision.model_file): the file
    exists, the backend reads that kind of file and is installed, the precision matches an export's.
    """
    extra_files = []
    if _text(context, "detector_params"):
        extra_files.append(os.path.expanduser(_text(context, "detector_params")))
        if not os.path.isfile(extra_files[0]):
            raise LaunchRefused(f"launch argument detector_params:={extra_files[0]}: no such file")
    chosen = {}  # what detector_params sets: an argument left empty keeps it
    try:
        configured = read_params_file(_config("detector.yaml"), "detector", namespace)
        for path in extra_files:
            chosen.update(read_params_file(path, "detector", namespace))
    except ValueError as error:
        raise LaunchRefused(str(error)) from error
    overrides = {}
    if _text(context, "image_topic") or "image_topic" not in chosen:
        overrides["image_topic"] = _text(context, "image_topic") or CAMERA_IMAGE_TOPIC
    if _text(context, "device"):
        overrides["device"] = _text(context, "device")
    compressed, autostart = _given_flag(context, "compressed"), _given_flag(context, "autostart")
    if compressed is not None:
        overrides["compressed"] = compressed
    if autostart is not None:
        overrides["autostart"] = autostart
    if use_sim_time is not None:
        overrides["use_sim_time"] = use_sim_time
    if _text(context, "backend"):
        overrides["backend"] = _choice(context, "backend", BACKEND_CHOICES)
    if _text(context, "precision"):
        overrides["precision"] = _choice(context, "precision", PRECISION_CHOICES)
    if _text(context, "num_threads"):
        if not _text(context, "num_threads").isdigit():
            raise LaunchRefused(
                f"launch argument num_threads:={_text(context, 'num_threads')!r} must be an integer >= 0"
            )
        overrides["num_threads"] = int(_text(context, "num_threads"))
    if _text(context, "model_path"):
        overrides["model_path"] = os.path.expanduser(_text(context, "model_path"))
    if _text(context, "coco_model"):
        overrides["coco_model"] = _choice(context, "coco_model", COCO_ARCHITECTURES)
    effective = {**configured, **chosen, **overrides}
    _check_detector_model(effective, "launch argument " if "model_path" in overrides else "")
    return extra_files, overrides


def _check_detector_model(effective: dict, where: str) -> None:
    """Refuse a detector model (COCO or a file) that the effective backend and precision cannot run."""
    precision = effective.get("precision", "auto")
    if effective.get("coco_model"):
        if precision == "int8":
            raise LaunchRefused(
                "launch argument precision:=int8 needs an int8 export: export_model --coco "
                f"{effective['coco_model']} --int8 --calibration frames/ --out coco_int8.xml, then model_path:=it"
            )
        return
    if not effective.get("model_path"):
        raise LaunchRefused(
            "launch argument model_path is empty and config/detector.yaml sets none: give "
            "model_path:=/path/to/best.pt (.onnx, .xml) or coco_model:=ssdlite320_mobilenet_v3 (or detector:=false "
            "where another machine runs the detector)"
        )
    try:
        check_model_file(effective["model_path"], effective.get("backend", "auto"), precision)
    except ValueError as error:
        raise LaunchRefused(where + str(error)) from error


def _launch_setup(context):
    """Check every argument and installed package first, then build the node list (all or nothing)."""
    _check_argument_names(context)
    use_sim_time = _given_flag(context, "use_sim_time")
    # Only the detector takes a user's parameters file; for the others, not given is rclpy's default.
    sim_time = bool(use_sim_time)
    stamped = _flag(context, "twist_stamped")
    camera = _choice(context, "camera", ("none", *CAMERAS))
    base = _choice(context, "base", BASES)
    detector, follower, rviz = _flag(context, "detector"), _flag(context, "follower"), _flag(context, "rviz")
    namespace = LaunchConfiguration("namespace").perform(context).strip().strip("/")
    if camera != "none" and not has_resource("packages", camera):
        raise LaunchRefused(
            f"launch argument camera:={camera}: the {camera} package is not installed "
            f"(sudo apt install {CAMERAS[camera]}), or camera:=none when another machine publishes the images"
        )
    if rviz and not has_resource("packages", "rviz2"):
        raise LaunchRefused(
            "launch argument rviz:=true: rviz2 is not installed (a ros-base install has none; sudo apt install "
            "ros-jazzy-rviz2), or rviz:=false and view image_annotated from another machine"
        )
    detector_parameters = _detector_parameters(context, namespace, use_sim_time) if detector else None
    executor = _choice(context, "executor", EXECUTORS, empty_ok=True)
    actions = []
    if executor:
        actions.append(SetEnvironmentVariable(EXECUTOR_ENV, executor))
    if "FASTRTPS_DEFAULT_PROFILES_FILE" not in os.environ:
        # Raw frames need bigger shared-memory segments in the camera's process than Fast DDS's default (most
        # best-effort VGA frames are lost otherwise): config/fastdds_large_frames.xml says why.
        actions.append(SetEnvironmentVariable("FASTRTPS_DEFAULT_PROFILES_FILE", _config("fastdds_large_frames.xml")))
    if camera != "none":
        actions.append(_camera_node(camera, sim_time))
    if detector:
        actions.append(_detector_node(*detector_parameters))
    if follower:
        actions.append(_follower_node(context, stamped, sim_time))
    if base != "none":
        actions.append(
            _required(
                package=PACKAGE,
                executable="picar_base",
                name="picar_base",
                parameters=[
                    _config("rover.yaml"),
                    _config("picar_base.yaml"),
                    {"hardware": base, "twist_stamped": stamped, "use_sim_time": sim_time},
                ],
                output="screen",
            )
        )
    if rviz:
        actions.append(_rviz_node(namespace, sim_time))
    # A scoped group so the namespace applies to these nodes only.
    return [GroupAction([PushRosNamespace(namespace), *actions])] if namespace else actions


def _camera_node(camera: str, use_sim_time: bool) -> Node:
    """The camera driver, publishing camera/image_raw (+ /compressed) and camera/camera_info."""
    if camera == "camera_ros":
        # camera_ros publishes ~/image_raw, ~/image_raw/compressed and ~/camera_info: the node name is the prefix.
        return _required(
            package="camera_ros",
            executable="camera_node",
            name="camera",
            parameters=[{"width": 640, "height": 480, "use_sim_time": use_sim_time}],
            output="screen",
        )
    # v4l2_camera publishes image_raw through image_transport, which expands the base name before adding
    # the transport suffix: a remap of image_raw would move the raw topic but leave image_raw/compressed
    # behind. A namespace moves all of them (image_raw, image_raw/compressed, camera_info) together.
    return _required(
        package="v4l2_camera",
        executable="v4l2_camera_node",
        name="v4l2_camera",
        namespace="camera",
        parameters=[{"image_size": [640, 480], "use_sim_time": use_sim_time}],
        output="screen",
    )


def _detector_node(extra_files: list, overrides: dict) -> Node:
    """The SSD detector: config/detector.yaml, then detector_params, then the launch arguments given."""
    return _required(
        package=PACKAGE,
        executable="detector",
        name="detector",
        parameters=[_config("detector.yaml"), *extra_files, overrides],
        output="screen",
    )


def _follower_node(context, stamped: bool, use_sim_time: bool) -> Node:
    """The follower: config/rover.yaml, config/follower.yaml, then target_class's names and the arguments given."""
    target_classes = [name.strip() for name in LaunchConfiguration("target_class").perform(context).split(",")]
    follower_overrides = {
        "target_classes": [name for name in target_classes if name],
        "twist_stamped": stamped,
        "use_sim_time": use_sim_time,
    }
    autostart = _given_flag(context, "autostart")
    if autostart is not None:
        follower_overrides["autostart"] = autostart
    return _required(
        package=PACKAGE,
        executable="follower",
        name="follower",
        parameters=[_config("rover.yaml"), _config("follower.yaml"), follower_overrides],
        output="screen",
    )


def _rviz_node(namespace: str, use_sim_time: bool) -> Node:
    """RViz with config/rover.rviz; it names the absolute /image_annotated, a remap follows the namespace."""
    return _required(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", _config("rover.rviz")],
        parameters=[{"use_sim_time": use_sim_time}],
        remappings=[("/image_annotated", f"/{namespace}/image_annotated")] if namespace else [],
        output="screen",
    )


def generate_launch_description():
    """Arguments plus one OpaqueFunction that checks them and starts the selected nodes."""
    return LaunchDescription([*ARGUMENTS, OpaqueFunction(function=_launch_setup)])
