"""rover.launch.py run for real, as ``ros2 launch ssd_ros rover.launch.py`` runs it.

A real ``LaunchService`` (test/launch_runner.py) starts the installed nodes over real DDS; every verdict
comes from the running system: the ROS graph (node names, topics, parameters), the launch's exit code,
its output, and which processes are left in the launch's session afterwards (none may be).

The detector loads a small randomly initialised SSDlite checkpoint the test writes, through the real
checkpoint code. Camera drivers are not installable here: test/camera_stand_in.py publishes on the
topic names the real drivers create, installed as a package of the driver's name in a temporary prefix.

Needs the launch runtime (``make setup`` builds it from ../shared/vendor, or an apt ROS install has it);
without it these tests skip and say so, except in CI, where ../shared/vendor is there and they must run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import (
    REPO_ROOT,
    RosProbe,
    make_checkpoint,
    plant_coco_weights,
    ros_env,
    shared_data,
    torchvision_coco_model,
)
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import GetState
from rcl_interfaces.srv import GetParameters
from rclpy.impl.implementation_singleton import rclpy_implementation
from rclpy.parameter import parameter_value_to_python
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from vision_msgs.msg import Detection2DArray, LabelInfo

from ssd_ros.cli import read_params_file

RUNNER = REPO_ROOT / "test" / "launch_runner.py"
STAND_IN = REPO_ROOT / "test" / "camera_stand_in.py"
RVIZ_STAND_IN = REPO_ROOT / "test" / "rviz_stand_in.py"
CONFIG = REPO_ROOT / "config"
VENDOR = REPO_ROOT.parent / "shared" / "vendor"
DRIVERS = {"camera_ros": "camera_node", "v4l2_camera": "v4l2_camera_node"}  # package -> executable
ARGUMENTS = (
    "model_path coco_model backend precision num_threads detector_params device target_class image_topic compressed "
    "camera base detector follower twist_stamped rviz autostart executor namespace use_sim_time"
).split()
# Generous ceilings for a node to appear: two shared cores, torch imports; a healthy run takes a few seconds.
START_TIMEOUT_S = 90.0
# launch escalates SIGINT -> SIGTERM after 5 s and -> SIGKILL 5 s later (its sigterm/sigkill_timeout
# defaults); a clean stop never reaches SIGTERM, which the tests check in the output. This only bounds the wait.
STOP_TIMEOUT_S = 30.0


def _launch_runtime_problem() -> str | None:
    try:
        import launch  # noqa: F401
        import launch_ros  # noqa: F401
    except ImportError as error:
        return f"no launch runtime ({error}): make setup builds it where ../shared/vendor exists"
    return None


@pytest.fixture(autouse=True)
def launch_runtime():
    problem = _launch_runtime_problem()
    if problem and os.environ.get("CI") == "true" and VENDOR.is_dir():
        pytest.fail(f"{problem}, and ../shared/vendor is present: the set-up did not build it")
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small randomly initialised VOC model (SSDlite320) saved through the real checkpoint code."""
    return make_checkpoint(tmp_path_factory.mktemp("model") / "ssdlite.pt")


@pytest.fixture(scope="module")
def exports(checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The checkpoint exported as the README's fast path does (export_model): fp32 OpenVINO IR, int8 ONNX and IR,
    int8 calibrated on real rover frames."""
    from ssd_ros.tools import export_model

    folder = tmp_path_factory.mktemp("exports")
    frames = sorted(shared_data("picar_camera", "detection", "test").glob("*.jpg"))[:4]
    calibration = folder / "calibration"
    calibration.mkdir()
    for frame in frames:
        (calibration / frame.name).symlink_to(frame)
    outputs = {
        "fp32.xml": ["--format", "openvino"],
        "int8.onnx": ["--int8", "--calibration", str(calibration)],
        "int8.xml": ["--format", "openvino", "--int8", "--calibration", str(calibration)],
    }
    for name, options in outputs.items():
        argv = ["--checkpoint", str(checkpoint), *options, "--out", str(folder / name), "--quiet"]
        assert export_model.main(argv) == 0, name
    return {name: folder / name for name in outputs}


# label_info is latched (transient local, reliable), as the detector publishes it.
LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)


def session_processes(session: int) -> list[str]:
    """'pid command' of every live (non-zombie) process in ``session``, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited while we looked
            continue
        state, _ppid, _pgrp, sid = text[text.rindex(")") + 2 :].split()[:4]
        if int(sid) == session and state != "Z":
            found.append(f"{stat.parent.name} {text[text.index('(') + 1 : text.rindex(')')]}")
    return found


class RoverLaunch:
    """``ros2 launch ssd_ros rover.launch.py <arguments>`` in a session of its own, output to a file."""

    def __init__(self, log: Path, *arguments: str, prefix: Path | None = None):
        env = ros_env()
        if prefix is not None:  # stand-in packages found like installed ones
            env["AMENT_PREFIX_PATH"] = f"{prefix}{os.pathsep}{env['AMENT_PREFIX_PATH']}"
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(RUNNER), "ssd_ros", "rover.launch.py", *arguments],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text()

    def lines_of(self, process: str) -> list[str]:
        """What a launched process itself printed (launch prefixes it with ``[<process>-<n>] ``)."""
        return [line for line in self.output().splitlines() if re.match(rf"\[{process}-\d+\] ", line)]

    def wait(self, timeout: float) -> int:
        """Wait for the launch to end by itself; returns its exit code."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"launch still running after {timeout} s:\n{self.output()}")

    def interrupt(self, *, whole_group: bool = True) -> int:
        """SIGINT as Ctrl-C in a terminal sends it (to the launch and its nodes), or to the launch alone
        (``kill -INT <pid>``; launch then leaves SIGINT to the terminal and escalates to SIGTERM after 5 s).
        Returns the launch's exit code."""
        assert self.proc.poll() is None, f"launch ended early:\n{self.output()}"
        if whole_group:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGINT)
        return self.wait(STOP_TIMEOUT_S)

    def assert_nothing_left(self):
        assert self.proc.poll() is not None
        left = session_processes(self.proc.pid)
        assert not left, f"processes left running after the launch ended: {left}\n{self.output()}"

    def kill(self):
        """Test clean-up: whatever is still in the session goes."""
        if self.proc.poll() is None or session_processes(self.proc.pid):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def rover(tmp_path):
    """Start launches with ``rover(*arguments, prefix=...)``; anything left is killed afterwards."""
    started = []

    def start(*arguments: str, prefix: Path | None = None) -> RoverLaunch:
        started.append(RoverLaunch(tmp_path / f"launch{len(started)}.log", *arguments, prefix=prefix))
        return started[-1]

    yield start
    for launch in started:
        launch.kill()


@pytest.fixture
def probe():
    """A node of the test's own, in its own context and executor, for the graph, parameters and topics."""
    with RosProbe("launch_test_probe") as probe:
        yield probe


def wait_until(probe: RosProbe, condition, timeout: float, what: str, launch: RoverLaunch):
    """Spin ``probe`` until ``condition()`` is truthy; fails with the launch output if the launch ends first."""

    def met():
        value = condition()
        assert value or launch.proc.poll() is None, f"launch ended while waiting for {what}:\n{launch.output()}"
        return value

    return probe.spin_until(met, timeout, what, detail=lambda: f"launch output:\n{launch.output()}")


def wait_for_detector(probe: RosProbe, launch: RoverLaunch) -> None:
    """Until the detector is active: its image subscription is the last thing it creates."""
    wait_until(
        probe,
        lambda: "/camera/image_raw" in topics(probe, "detector", "/", "subscriber"),
        START_TIMEOUT_S,
        "/detector subscribing /camera/image_raw",
        launch,
    )


def topics(probe: RosProbe, name: str, namespace: str, kind: str) -> dict[str, list[str]]:
    """Topics a remote node publishes or subscribes (``kind``: 'publisher' | 'subscriber') -> types."""
    getter = getattr(probe.node, f"get_{kind}_names_and_types_by_node")
    try:
        return dict(getter(name, namespace))
    except rclpy_implementation.NodeNameNonExistentError:  # not (or no longer) in the graph
        return {}


def get_parameters(probe: RosProbe, fqn: str, names: list[str]) -> dict[str, object]:
    """Values of a remote node's parameters through its get_parameters service."""
    values = probe.call(GetParameters, f"{fqn}/get_parameters", GetParameters.Request(names=names), 30.0).values
    assert len(values) == len(names), f"{fqn}: some of {names} not declared or unset"
    return {name: parameter_value_to_python(value) for name, value in zip(names, values)}


def config_parameters(name: str) -> dict[str, object]:
    """A node's parameter file, less empty lists (YAML's [] has no element type: the node keeps it unset)."""
    parameters = yaml.safe_load((CONFIG / name).read_text())["/**"]["ros__parameters"]
    return {key: value for key, value in parameters.items() if value != []}


def install_stand_in(prefix: Path, package: str, executable: str, *command: str) -> Path:
    """Install ``command`` under ``prefix`` as ``package``'s ``executable``, found like an installed package."""
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True, exist_ok=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / package).write_text("")
    (prefix / "share" / package).mkdir(exist_ok=True)
    script = prefix / "lib" / package / executable
    script.parent.mkdir(parents=True)
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" {" ".join(command)} "$@"\n')
    script.chmod(0o755)
    return prefix


def camera_stand_in(prefix: Path, driver: str) -> Path:
    """test/camera_stand_in.py as package ``driver`` with the real driver's executable name."""
    return install_stand_in(prefix, driver, DRIVERS[driver], f'"{STAND_IN}"', driver)


def test_show_args_lists_every_argument_with_description_and_default():
    """What ``ros2 launch ssd_ros rover.launch.py --show-args`` prints, from the installed file."""
    from ament_index_python.packages import get_package_share_directory
    from launch.launch_description_sources import get_launch_description_from_python_launch_file

    path = Path(get_package_share_directory("ssd_ros")) / "launch" / "rover.launch.py"
    assert path.resolve() == (REPO_ROOT / "launch" / "rover.launch.py").resolve(), "installed launch file is stale"
    arguments = get_launch_description_from_python_launch_file(str(path)).get_launch_arguments()
    shown = {}
    for argument in arguments:
        assert argument.default_value is not None, f"{argument.name} has no default"
        default = " + ".join(token.describe() for token in argument.default_value)
        assert len(argument.description) >= 15, f"{argument.name}: {argument.description!r}"
        shown[argument.name] = default
    assert sorted(shown) == sorted(ARGUMENTS)
    assert shown["base"] == "'sim'" and shown["camera"] == "'none'" and shown["rviz"] == "'false'"
    # Empty: the parameters files' value (config/detector.yaml's, or detector_params'), so that file can set them.
    detector = ("backend", "precision", "num_threads", "coco_model", "device", "image_topic", "compressed", "autostart")
    assert {shown[name] for name in (*detector, "use_sim_time")} == {"''"}


@pytest.mark.parametrize("whole_group", [True, False], ids=["ctrl-c", "sigint-to-launch"])
def test_default_start_brings_up_the_rover_and_sigint_stops_every_process(rover, probe, checkpoint, whole_group):
    launch = rover(f"model_path:={checkpoint}", "device:=cpu")
    expected = {
        "detector": ({"/camera/image_raw": ["sensor_msgs/msg/Image"]}, {"/detections", "/image_annotated"}),
        "follower": ({"/detections": ["vision_msgs/msg/Detection2DArray"]}, {"/cmd_vel"}),
        "picar_base": ({"/cmd_vel": ["geometry_msgs/msg/Twist"]}, set()),
    }
    for name, (subscribed, published) in expected.items():
        # Subscriptions are the last thing each node creates: once they show, the node is up.
        wait_until(
            probe,
            lambda name=name, subscribed=subscribed: (
                subscribed.items() <= topics(probe, name, "/", "subscriber").items()
            ),
            START_TIMEOUT_S,
            f"/{name} subscribing {subscribed}",
            launch,
        )
        assert published <= set(topics(probe, name, "/", "publisher")), name

    # Each node runs with its config file, plus the launch's overrides.
    launched = {
        "detector": {"model_path": str(checkpoint), "device": "cpu", "image_topic": "camera/image_raw"},
        "follower": {"target_classes": ["person"], "twist_stamped": False},
        "picar_base": {"hardware": "sim", "twist_stamped": False},
    }
    for name, overrides in launched.items():
        want = {**config_parameters(f"{name}.yaml"), **overrides, "use_sim_time": False}
        assert get_parameters(probe, f"/{name}", list(want)) == want, name

    assert launch.interrupt(whole_group=whole_group) == 0
    launch.assert_nothing_left()
    output = launch.output()
    for name in expected:
        assert re.search(rf"\[INFO\] \[{name}-\d+\]: process has finished cleanly", output), output
    assert "SIGKILL" not in output, output
    if whole_group:  # each node stopped on the SIGINT itself, before launch's 5 s escalation
        assert "SIGTERM" not in output, "a node did not stop on SIGINT:\n" + output
    assert "stopped: motor off" in launch.lines_of("picar_base")[-1], output


@pytest.mark.parametrize("driver", ["camera_ros", "v4l2_camera"])
@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "compressed"])
def test_camera_frames_reach_the_detector(rover, probe, checkpoint, tmp_path, driver, compressed):
    """For every camera choice, raw or compressed, in a namespace: the detector answers the camera's frames."""
    from camera_stand_in import FRAME_ID

    prefix = camera_stand_in(tmp_path / "prefix", driver)
    launch = rover(
        f"camera:={driver}",
        f"compressed:={str(compressed).lower()}",
        "namespace:=picar1",
        f"model_path:={checkpoint}",
        "device:=cpu",
        "follower:=false",
        "base:=none",
        prefix=prefix,
    )
    answers = []
    probe.node.create_subscription(Detection2DArray, "/picar1/detections", answers.append, 10)
    wait_until(
        probe,
        lambda: any(msg.header.frame_id == FRAME_ID for msg in answers),
        START_TIMEOUT_S,
        "detections of the camera's frames on /picar1/detections",
        launch,
    )
    image = "/picar1/camera/image_raw" + ("/compressed" if compressed else "")
    # Besides the camera, the detector reads only what the follower says it follows (to mark it). Which node owns
    # which endpoint reaches the graph on its own topic, so it may come after the frames' answers: waited for.
    expected = {image, "/picar1/follow_target", "/picar1/follow_state"}
    wait_until(
        probe,
        lambda: set(topics(probe, "detector", "/picar1", "subscriber")) >= expected,
        START_TIMEOUT_S,
        "the detector's subscriptions in the graph",
        launch,
    )
    assert set(topics(probe, "detector", "/picar1", "subscriber")) == expected
    camera_topics = {"/picar1/camera/image_raw", "/picar1/camera/image_raw/compressed", "/picar1/camera/camera_info"}
    # camera_ros: its node name is the topics' prefix; v4l2_camera: the launch's namespace "camera" is.
    camera_node = {"camera_ros": ("camera", "/picar1"), "v4l2_camera": ("v4l2_camera", "/picar1/camera")}[driver]
    wait_until(
        probe,
        lambda: camera_topics <= set(topics(probe, *camera_node, "publisher")),
        START_TIMEOUT_S,
        f"{driver}'s topics in the graph",
        launch,
    )
    # output="screen": the driver's own stdout reaches the launch output.
    assert any("stand-in publishing" in line for line in launch.lines_of(DRIVERS[driver])), launch.output()

    assert launch.interrupt() == 0
    launch.assert_nothing_left()


def test_rviz_follows_the_namespace_and_closing_it_stops_the_launch(rover, probe, tmp_path):
    """RViz's display topic moves with the namespace; closing RViz ends the launch, base stopped."""
    prefix = install_stand_in(tmp_path / "prefix", "rviz2", "rviz2", f'"{RVIZ_STAND_IN}"')
    launch = rover("rviz:=true", "namespace:=picar1", "detector:=false", "follower:=false", prefix=prefix)
    for name, namespace, topic in (
        ("rviz2", "/picar1", "/picar1/image_annotated"),
        ("picar_base", "/picar1", "/picar1/cmd_vel"),
    ):
        wait_until(
            probe,
            lambda name=name, namespace=namespace, topic=topic: topic in topics(probe, name, namespace, "subscriber"),
            START_TIMEOUT_S,
            f"{namespace}/{name} subscribing {topic}",
            launch,
        )
    assert any("stand-in showing /picar1/image_annotated" in line for line in launch.lines_of("rviz2"))
    [pid] = re.findall(r"\[rviz2-\d+\]: process started with pid \[(\d+)\]", launch.output())
    os.kill(int(pid), signal.SIGTERM)  # what closing the RViz window does: rviz2 exits
    assert launch.wait(STOP_TIMEOUT_S) == 0
    launch.assert_nothing_left()
    output = launch.output()
    assert re.search(r"process\[rviz2-\d+\] was required: shutting down launched system", output), output
    assert "stopped: motor off" in launch.lines_of("picar_base")[-1], output


@pytest.mark.parametrize(
    ("model", "backend", "precision"),
    [("int8.onnx", "onnxruntime", ""), ("int8.xml", "auto", ""), ("fp32.xml", "openvino", "fp32")],
)
def test_exported_models_run_from_the_launch(rover, probe, exports, model, backend, precision):
    """The README's fast path: an export (int8 ONNX, OpenVINO IR) runs from launch arguments alone."""
    arguments = [f"model_path:={exports[model]}", f"backend:={backend}", "num_threads:=1", "follower:=false"]
    launch = rover(*arguments, *([f"precision:={precision}"] if precision else []), "base:=none")
    wait_for_detector(probe, launch)
    values = get_parameters(probe, "/detector", ["model_path", "backend", "num_threads"])
    assert values == {"model_path": str(exports[model]), "backend": backend, "num_threads": 1}
    assert launch.interrupt() == 0
    launch.assert_nothing_left()


def test_a_coco_person_model_follows_people_without_training(rover, probe, torch_hub_cache, monkeypatch, tmp_path):
    """The README's fresh-Pi path: export_model --coco ssdlite320_mobilenet_v3 (planted weights of the published
    shapes stand in for the download), then the launch with that file and target_class:=person: the detector
    reports the 80 COCO names and the follower takes person as one of the model's classes."""
    from ssd_ros.tools import export_model

    architecture = "ssdlite320_mobilenet_v3"
    plant_coco_weights(monkeypatch, architecture, torchvision_coco_model(architecture).state_dict())
    model = tmp_path / "coco_ssdlite.onnx"
    assert export_model.main(["--coco", architecture, "--out", str(model), "--quiet"]) == 0
    labels = []
    probe.node.create_subscription(LabelInfo, "/label_info", labels.append, LATCHED)
    launch = rover(f"model_path:={model}", "num_threads:=1", "target_class:=person", "base:=none")
    wait_until(probe, lambda: labels, START_TIMEOUT_S, "the detector's label_info", launch)
    names = [entry.class_name for entry in labels[-1].class_map]
    assert len(names) == 80 and "person" in names
    wait_until(
        probe,
        lambda: "/detections" in topics(probe, "follower", "/", "subscriber"),
        START_TIMEOUT_S,
        "/follower subscribing /detections",
        launch,
    )
    assert get_parameters(probe, "/follower", ["target_classes"]) == {"target_classes": ["person"]}
    assert launch.interrupt() == 0
    launch.assert_nothing_left()
    assert "not among the model" not in launch.output(), launch.output()


def test_autostart_false_leaves_detector_and_follower_to_a_lifecycle_manager(rover, probe, checkpoint):
    """autostart:=false: both nodes wait unconfigured (no subscription) until a manager configures and activates.

    With executor:=single they spin rclpy's SingleThreadedExecutor, the way back from the events executor: the
    lifecycle services and the detections go through it.
    """
    launch = rover(f"model_path:={checkpoint}", "device:=cpu", "autostart:=false", "base:=none", "executor:=single")
    for name in ("detector", "follower"):
        wait_until(
            probe,
            lambda name=name: f"/{name}/get_state" in dict(probe.node.get_service_names_and_types()),
            START_TIMEOUT_S,
            f"/{name}'s lifecycle services",
            launch,
        )
        state = probe.call(GetState, f"/{name}/get_state", GetState.Request(), 30.0).current_state.label
        assert state == "unconfigured", name
        assert not topics(probe, name, "/", "subscriber"), f"{name} subscribes before it is active"
    for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
        assert probe.change_state("/detector", transition, START_TIMEOUT_S)
    wait_for_detector(probe, launch)
    assert launch.interrupt() == 0
    launch.assert_nothing_left()
    spinning = [line for line in launch.output().splitlines() if "spinning with rclpy's" in line]
    assert len(spinning) == 2 and all("SingleThreadedExecutor" in line for line in spinning), launch.output()


def test_a_detector_parameters_file_sets_the_model_and_backend(rover, probe, exports, tmp_path):
    """detector_params:=file applies over config/detector.yaml; its model is checked before anything starts."""
    params = tmp_path / "my_detector.yaml"
    params.write_text(
        f"/**:\n  ros__parameters:\n    model_path: {exports['int8.onnx']}\n    backend: onnxruntime\n"
        "    score_threshold: 0.6\n"
    )
    launch = rover(f"detector_params:={params}", "follower:=false", "base:=none")
    wait_for_detector(probe, launch)
    values = get_parameters(probe, "/detector", ["model_path", "backend", "score_threshold"])
    assert values == {"model_path": str(exports["int8.onnx"]), "backend": "onnxruntime", "score_threshold": 0.6}
    assert launch.interrupt() == 0
    launch.assert_nothing_left()


def test_a_detector_parameters_file_sets_what_no_argument_gives(rover, probe, checkpoint, tmp_path):
    """The arguments left empty keep detector_params' image_topic, compressed and device; one given still wins."""
    params = tmp_path / "front_camera.yaml"
    params.write_text(
        "/**:\n  ros__parameters:\n    image_topic: front/image_raw\n    compressed: true\n    device: cpu\n"
        "    use_sim_time: true\n"
    )
    launch = rover(
        f"model_path:={checkpoint}",
        f"detector_params:={params}",
        "use_sim_time:=false",
        "follower:=false",
        "base:=none",
    )
    wait_until(
        probe,
        lambda: "/front/image_raw/compressed" in topics(probe, "detector", "/", "subscriber"),
        START_TIMEOUT_S,
        "/detector subscribing /front/image_raw/compressed",
        launch,
    )
    assert topics(probe, "detector", "/", "subscriber")["/front/image_raw/compressed"] == [
        "sensor_msgs/msg/CompressedImage"
    ]
    values = get_parameters(probe, "/detector", ["image_topic", "compressed", "device", "use_sim_time"])
    assert values == {"image_topic": "front/image_raw", "compressed": True, "device": "cpu", "use_sim_time": False}
    assert launch.interrupt() == 0
    launch.assert_nothing_left()


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["model_path:={int8.onnx}", "backend:=torch"], "is an ONNX export: backend torch cannot run it"),
        (["model_path:={fp32.xml}", "backend:=onnxruntime"], "is an OpenVINO IR: backend onnxruntime cannot run it"),
        (
            ["model_path:={int8.onnx}", "backend:=openvino", "precision:=bf16"],
            "is an int8 export: it runs as int8 only",
        ),
        (
            ["model_path:={fp32.xml}", "backend:=openvino", "precision:=int8"],
            "is an fp32 export: int8 needs an int8 export",
        ),
        (["model_path:={checkpoint}", "precision:=int8"], "int8 needs an int8 export (export_model"),
        (["model_path:={bare.xml}"], "weights bare.bin are missing beside it"),
        (["model_path:={notes.txt}"], "expected a checkpoint (.pt), an ONNX export (.onnx) or an OpenVINO IR"),
        (["model_path:={int8.onnx}", "backend:=openvin"], "backend:='openvin' must be one of auto, torch"),
        (["model_path:={checkpoint}", "target_clas:=person"], "unknown launch argument target_clas:= (did you mean"),
        (["model_path:={checkpoint}", "num_threads:=two"], "num_threads:='two' must be an integer"),
        (["coco_model:=ssd512"], "coco_model:='ssd512' must be one of ssdlite320_mobilenet_v3, ssd300_vgg16"),
        (["coco_model:=ssdlite320_mobilenet_v3", "precision:=int8"], "precision:=int8 needs an int8 export"),
    ],
    ids=[
        "onnx-on-torch",
        "ir-on-onnxruntime",
        "int8-as-bf16",
        "fp32-export-as-int8",
        "checkpoint-as-int8",
        "ir-without-bin",
        "unknown-suffix",
        "backend-typo",
        "argument-typo",
        "threads-not-a-number",
        "coco-typo",
        "coco-as-int8",
    ],
)
def test_a_model_the_detector_cannot_run_is_refused_before_any_process_starts(
    rover, exports, checkpoint, tmp_path, arguments, named
):
    """One error line naming the fix, exit code 1, nothing started: the refusals the README's fast path can hit."""
    bare = tmp_path / "bare.xml"
    bare.write_text(exports["fp32.xml"].read_text())  # the IR's .xml copied without its .bin
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    files = {f"{{{name}}}": str(path) for name, path in exports.items()}
    files.update({"{checkpoint}": str(checkpoint), "{bare.xml}": str(bare), "{notes.txt}": str(notes)})
    for placeholder, path in files.items():
        arguments = [argument.replace(placeholder, path) for argument in arguments]
    launch = rover(*arguments)
    assert launch.wait(START_TIMEOUT_S) == 1
    launch.assert_nothing_left()
    output = launch.output()
    errors = [line for line in output.splitlines() if line.startswith("[ERROR] [launch]")]
    assert len(errors) == 1 and named in errors[0], output
    assert "Traceback" not in output and "process started" not in output, output


def test_a_required_process_dying_stops_the_whole_launch(rover, tmp_path):
    """The detector refuses a file that is no checkpoint: follower and base must not stay up without it, and the
    launch exits non-zero so a service manager (systemd, a supervisor) sees the failure."""
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("not a checkpoint")
    launch = rover(f"model_path:={not_a_checkpoint}", "device:=cpu")
    assert launch.wait(START_TIMEOUT_S) == 1
    launch.assert_nothing_left()
    output = launch.output()
    assert re.search(r"\[detector-\d+\] \[FATAL\].*cannot start", output), output
    errors = [line for line in output.splitlines() if line.startswith("[ERROR] [launch]")]
    assert len(errors) == 1, output
    assert re.search(r"detector exited with code [1-9]\d*: stopping every rover process", errors[0]), output
    for name in ("follower", "picar_base"):
        assert re.search(rf"\[INFO\] \[{name}-\d+\]: process has finished cleanly", output), output
    if any("base ready" in line for line in launch.lines_of("picar_base")):  # it may still have been starting
        assert "stopped: motor off" in launch.lines_of("picar_base")[-1], output


@pytest.mark.parametrize(
    ("arguments", "named", "absent"),
    [
        ([], "model_path is empty", None),
        (["model_path:=/nonexistent/best.pt"], "model_path:=/nonexistent/best.pt: no such file", None),
        (["rviz:=true"], "rviz:=true: rviz2 is not installed", "rviz2"),
        (["camera:=camera_ros"], "camera:=camera_ros: the camera_ros package is not installed", "camera_ros"),
        (["camera:=v4l2_camera"], "camera:=v4l2_camera: the v4l2_camera package is not installed", "v4l2_camera"),
        (["base:=picar"], "base:='picar' must be one of picar_b, sim, none", None),
        (["compressed:=maybe"], "compressed:='maybe' is not a boolean", None),
        (["executor:=multi"], "executor:='multi' must be one of events, single", None),
    ],
    ids=[
        "no-model",
        "missing-model",
        "rviz-absent",
        "camera_ros-absent",
        "v4l2_camera-absent",
        "bad-base",
        "bad-flag",
        "bad-executor",
    ],
)
def test_refused_before_any_process_starts(rover, checkpoint, arguments, named, absent):
    """One error line naming the argument, exit code 1, and not a single process started."""
    from ament_index_python import has_resource

    if absent is not None and has_resource("packages", absent):
        pytest.skip(f"{absent} is installed here")
    gives_model = any(argument.startswith("model_path:=") for argument in arguments)
    # A valid model for the others, so the argument under test is what is refused ("no-model" gives none).
    model = [] if gives_model or not arguments else [f"model_path:={checkpoint}"]
    launch = rover(*model, *arguments)
    assert launch.wait(START_TIMEOUT_S) == 1
    launch.assert_nothing_left()
    output = launch.output()
    errors = [line for line in output.splitlines() if line.startswith("[ERROR] [launch]")]
    assert len(errors) == 1 and named in errors[0], output
    assert "process started" not in output, output


@pytest.mark.parametrize(
    ("text", "namespace", "model_path"),
    [
        ("/**:\n  ros__parameters: {model_path: any.pt}\n", "", "any.pt"),
        ("detector:\n  ros__parameters: {model_path: own.pt}\n", "", "own.pt"),
        ("/picar1/detector:\n  ros__parameters: {model_path: ns.pt}\n", "picar1", "ns.pt"),
        (
            "/**:\n  ros__parameters: {model_path: a.pt}\n/**/detector:\n  ros__parameters: {model_path: b.pt}\n",
            "x",
            "b.pt",
        ),
    ],
    ids=["wildcard", "node-name", "namespaced", "specific-wins"],
)
def test_detector_parameters_found_under_any_key_that_names_the_node(tmp_path, text, namespace, model_path):
    """The launch file reads config/detector.yaml's model_path as the node will (ssd_ros.cli.read_params_file)."""
    path = tmp_path / "detector.yaml"
    path.write_text(text)
    assert read_params_file(path, "detector", namespace)["model_path"] == model_path


@pytest.mark.parametrize(
    "text",
    ["follower:\n  ros__parameters: {model_path: x.pt}\n", "/**:\n  model_path: x.pt\n", "", "- a list\n", "/**: ["],
    ids=["other-node", "no-ros__parameters", "empty", "list", "bad-yaml"],
)
def test_detector_parameter_file_without_a_section_for_it_is_a_clear_refusal(tmp_path, text):
    """Not a KeyError: the refusal (the launch shows it as its one error line) names the file and the keys."""
    path = tmp_path / "detector.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(path))) as refused:
        read_params_file(path, "detector")
    assert "'/**' or '/**/detector'" in str(refused.value) or "cannot read" in str(refused.value)


def test_a_flat_mapping_of_parameters_is_read_as_it_is(tmp_path):
    """The offline tools (tune_follower --params, bag_eval --follower-params) also take a plain mapping."""
    path = tmp_path / "follower.yaml"
    path.write_text("max_linear_mps: 0.3\ntarget_classes: [cat]\n")
    assert read_params_file(path, "follower") == {"max_linear_mps": 0.3, "target_classes": ["cat"]}
