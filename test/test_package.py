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
    """The core package (all but ros/ and tools/) and the training scripts: both must run without ROS."""
    core = [
        path
        for path in sorted((REPO_ROOT / "ssd_ros").rglob("*.py"))
        if path.relative_to(REPO_ROOT / "ssd_ros").parts[0] not in ("ros", "tools")
    ]
    return core + sorted((REPO_ROOT / "training").glob("*.py"))


def test_ros_free_set_holds_the_core_and_training():
    names = {str(path.relative_to(REPO_ROOT)) for path in _ros_free_files()}
    assert {"ssd_ros/detector.py", "ssd_ros/follow.py", "training/train.py", "training/evaluate.py"} <= names


@pytest.mark.parametrize("path", _ros_free_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_core_and_training_have_no_ros_imports(path):
    ros = [m for m in _imported_modules(path) if m.split(".")[0] in ROS_MODULES or m.startswith("ssd_ros.ros")]
    assert not ros, f"{path.relative_to(REPO_ROOT)} must run without ROS but imports {ros}"


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
