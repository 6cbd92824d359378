"""The package as users get it: manifest, installed executables, layering rules, linters."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from catkin_pkg.package import parse_package
from conftest import EXECUTABLES, REPO_ROOT

EXPECTED_EXECUTABLES = ["detector", "follower", "follower_sim", "picar_base", "bag_eval", "make_bag", "bag_play"]


def test_manifest_declares_runtime_dependencies():
    package = parse_package(str(REPO_ROOT / "package.xml"))
    assert package.name == "ssd_ros" and package.package_format == 3
    declared = {dep.name for dep in package.exec_depends}
    for key in ["rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "std_srvs", "diagnostic_msgs", "vision_msgs"]:
        assert key in declared
    for key in ["python3-numpy", "python3-opencv", "python3-torch", "python3-torchvision"]:
        assert key in declared


# Third-party modules the package imports that rosdep cannot install, and where their install is documented.
NO_ROSDEP_KEY = {
    "rosbags": "no rosdep key: pip (requirements/apt_ros.txt)",
    "RPi": "no key for Ubuntu 24.04: apt python3-rpi-lgpio (docs/picar_b.md)",
    "smbus2": "optional: python3-smbus (declared) serves the same API",
    "onnx": "export: pip (requirements/apt_ros.txt)",
    "onnxruntime": "inference backend: pip (requirements/apt_ros.txt)",
    "openvino": "inference backend: pip (requirements/apt_ros.txt)",
    "nncf": "optional, int8 export only: pip (requirements/workspace.txt); without it ONNX Runtime's schemes alone",
    "rich": "NNCF's own dependency, imported only where NNCF is (to quiet its progress bars)",
}
PIP_ON_THE_ROBOT = ("rosbags", "onnx", "onnxruntime", "openvino", "torch", "torchvision")
# Import name -> rosdep key, where they differ.
ROSDEP_KEYS = {
    "numpy": "python3-numpy",
    "cv2": "python3-opencv",
    "PIL": "python3-pil",
    "torch": "python3-torch",
    "torchvision": "python3-torchvision",
    "yaml": "python3-yaml",
    "tqdm": "python3-tqdm",
    "matplotlib": "python3-matplotlib",
    "smbus": "python3-smbus",
}


def test_every_import_of_the_package_and_launch_file_is_declared():
    """What ``rosdep install --from-paths`` installs covers every module ssd_ros and its launch file import."""
    package = parse_package(str(REPO_ROOT / "package.xml"))
    declared = {dep.name for dep in package.exec_depends}
    sources = [*sorted((REPO_ROOT / "ssd_ros").rglob("*.py")), *sorted((REPO_ROOT / "launch").glob("*.py"))]
    imported = {}
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:  # relative imports are the package's own
                names = [node.module]
            else:
                continue
            for top in (name.split(".")[0] for name in names):
                if top not in sys.stdlib_module_names and top != "ssd_ros":
                    imported.setdefault(top, path)
    for module, path in sorted(imported.items()):
        if module in NO_ROSDEP_KEY:
            continue
        key = ROSDEP_KEYS.get(module, module)
        assert key in declared, f"{path.relative_to(REPO_ROOT)} imports {module}: declare {key} in package.xml"


def test_the_apt_route_pins_what_pip_must_install():
    """requirements/apt_ros.txt (README's apt/Pi steps) pins every pip-only module and both runtimes, per machine,
    and is the workspace's source for those pins (one place)."""
    from packaging.requirements import Requirement

    lines = (REPO_ROOT / "requirements" / "apt_ros.txt").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    for machine in ("aarch64", "x86_64"):
        environment = {"platform_machine": machine}
        names = [pin.name for pin in pins if pin.marker is None or pin.marker.evaluate(environment)]
        assert sorted(names) == sorted(PIP_ON_THE_ROBOT), machine
        assert all(len(pin.specifier) == 1 and next(iter(pin.specifier)).operator == "==" for pin in pins)
    onnxruntime = next(pin for pin in pins if pin.name == "onnxruntime")
    assert "1.21.0" not in onnxruntime.specifier, "onnxruntime 1.21.0 crashes on Pi 4s (illegal instruction)"
    assert "-r apt_ros.txt" in (REPO_ROOT / "requirements" / "workspace.txt").read_text().splitlines()


def test_the_aarch64_check_pins_what_the_robot_and_workspace_pin():
    """requirements/pi.txt (the emulated root's full set: no rosdep there) may not drift from the pins a robot
    (apt_ros.txt, aarch64) and this workspace (workspace.txt) install."""
    from packaging.requirements import Requirement

    def pins(name: str) -> dict[str, str]:
        lines = (REPO_ROOT / "requirements" / name).read_text().splitlines()
        found = [Requirement(line.split("#")[0]) for line in lines if line.strip() and line[0] not in "#-"]
        aarch64 = [r for r in found if r.marker is None or r.marker.evaluate({"platform_machine": "aarch64"})]
        return {r.name.lower(): str(r.specifier) for r in aarch64}

    robot, workspace = pins("apt_ros.txt"), pins("workspace.txt")
    for package, version in pins("pi.txt").items():
        assert version == robot.get(package, workspace.get(package)), package


@pytest.mark.parametrize("name", EXPECTED_EXECUTABLES)
def test_console_script_installed(name):
    exe = EXECUTABLES / name
    assert exe.is_file(), f"{exe} not installed"
    assert exe.read_text().startswith("#!"), "console script must be directly runnable"


def test_env_sh_puts_the_executables_on_path():
    """The docs run ``make_bag``, ``bag_eval``, ... by name after ``. scripts/env.sh`` (no ``ros2 run`` here)."""
    script = ". scripts/env.sh && command -v " + " ".join(EXPECTED_EXECUTABLES)
    result = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, env={})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [str(EXECUTABLES / name) for name in EXPECTED_EXECUTABLES]


def _imported_modules(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


ROS_MODULES = ("rclpy", "std_msgs", "sensor_msgs", "geometry_msgs", "vision_msgs", "diagnostic_msgs", "std_srvs")


def _ros_free_files() -> list[Path]:
    """The core package (all but ros/ and tools/), the training scripts and the offline tools the docs run
    without ROS: all must import no ROS module."""
    core = [
        path
        for path in sorted((REPO_ROOT / "ssd_ros").rglob("*.py"))
        if path.relative_to(REPO_ROOT / "ssd_ros").parts[0] not in ("ros", "tools")
    ]
    offline_tools = [REPO_ROOT / "ssd_ros" / "tools" / name for name in ("tune_follower.py", "export_model.py")]
    return core + offline_tools + sorted((REPO_ROOT / "training").glob("*.py"))


def test_ros_free_set_holds_the_core_and_training():
    names = {str(path.relative_to(REPO_ROOT)) for path in _ros_free_files()}
    assert {
        "ssd_ros/vision/detector.py",
        "ssd_ros/control/follow.py",
        "training/train.py",
        "training/evaluate.py",
    } <= names


@pytest.mark.parametrize("path", _ros_free_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_core_and_training_have_no_ros_imports(path):
    ros = [m for m in _imported_modules(path) if m.split(".")[0] in ROS_MODULES or m.startswith("ssd_ros.ros")]
    assert not ros, f"{path.relative_to(REPO_ROOT)} must run without ROS but imports {ros}"


# Who may import whom inside the package (the rooms' docstrings say why); "" is the shared top level's settings,
# "cli" its command-line helpers (which name the detector's backend choices). ros and tools may import every room.
ROOMS = ("vision", "evaluation", "control", "rover", "simulation")
MAY_IMPORT = {
    "": set(),
    "cli": {"", "vision"},
    "vision": {""},
    "evaluation": {"", "vision"},
    "control": {"", "vision"},
    "rover": {"", "control"},
    "simulation": {"", "control", "vision"},
}


def _room(module: str) -> str:
    """The room of an ``ssd_ros`` module name (``ssd_ros.vision.model`` -> ``vision``), "" for the top level."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ROOMS + ("ros", "tools")) else ""


def _room_files():
    for path in sorted((REPO_ROOT / "ssd_ros").rglob("*.py")):
        parts = path.relative_to(REPO_ROOT / "ssd_ros").parts
        room = parts[0] if len(parts) > 1 else ("cli" if path.name == "cli.py" else "")
        if room not in ("ros", "tools"):
            yield room, path


def test_every_core_module_lives_in_a_room():
    """The top level keeps only the shared helpers; every other core module sits in its domain's room."""
    top = sorted(path.name for room, path in _room_files() if room in ("", "cli"))
    assert top == ["__init__.py", "cli.py", "settings.py"]
    for room in ROOMS:
        init = REPO_ROOT / "ssd_ros" / room / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), (
            f"{room}/__init__.py needs a docstring"
        )


@pytest.mark.parametrize(
    "room,path", list(_room_files()), ids=lambda x: str(x.relative_to(REPO_ROOT)) if isinstance(x, Path) else x
)
def test_rooms_import_only_what_the_layering_allows(room, path):
    """A room imports only the rooms below it (vision under evaluation and control, control under rover, ...)."""
    wrong = [
        module
        for module in _imported_modules(path)
        if module.split(".")[0] == "ssd_ros" and _room(module) not in (room, *MAY_IMPORT[room])
    ]
    assert not wrong, f"{path.relative_to(REPO_ROOT)} ({room or 'top level'}) may not import {wrong}"


def test_layering_check_catches_a_wrong_import():
    """The check above sees an upward import (vision importing control) for what it is."""
    assert _room("ssd_ros.control.follow") == "control" and "control" not in MAY_IMPORT["vision"]
    assert _room("ssd_ros.settings") == "" and _room("ssd_ros.ros.runner") == "ros"


@pytest.mark.parametrize("module", ["ssd_ros.tools.export_model", "ssd_ros.tools.tune_follower", "training.evaluate"])
def test_offline_tools_run_where_ros_is_not_installed(module):
    """What they import, however indirectly, needs no ROS (the aarch64 check runs them without it)."""
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in (*ROS_MODULES, "rclpy.node"))
    code = f"import sys; {blocked}; import {module}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1]


def test_ruff_lint_clean():
    ruff = shutil.which("ruff") or pytest.fail("ruff not installed: run make setup")
    result = subprocess.run([ruff, "check", "--no-cache", str(REPO_ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_clean():
    ruff = shutil.which("ruff") or pytest.fail("ruff not installed: run make setup")
    result = subprocess.run([ruff, "format", "--check", "--no-cache", str(REPO_ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_matches_the_ros_wheels():
    """The ROS 2 Jazzy wheels in requirements/workspace.txt are built for CPython 3.11 (syntax: ruff above)."""
    assert sys.version_info[:2] == (3, 11)
