"""Every installed node answers ``--help``: its parameters with defaults and descriptions, then exit 0.

Run as a user would (the installed executable); a node that started instead would create a ROS node and
never exit by itself, so the subprocess timeout would fail the test.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from conftest import EXECUTABLES, ros_env

NODES = {
    "detector": "ssd_ros.ros.detector_node",
    "follower": "ssd_ros.ros.follower_node",
    "picar_base": "ssd_ros.ros.picar_base_node",
    "follower_sim": "ssd_ros.ros.follower_sim_node",
}


@pytest.mark.parametrize("executable", sorted(NODES))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_node_help_lists_every_parameter_and_exits(executable, flag):
    table = importlib.import_module(NODES[executable]).PARAMETERS
    extra = ["--ros-args", "-p", "device:=cpu"] if flag == "-h" else []  # ROS arguments do not hide it
    result = subprocess.run(
        [sys.executable, str(EXECUTABLES / executable), flag, *extra],
        capture_output=True,
        text=True,
        timeout=120,  # imports only (torch for the detector); a started node would never end
        env=ros_env(),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"usage: {executable} ") and "--ros-args" in lines[0]
    for name, (_, descriptor) in table.items():
        [row] = [i for i, line in enumerate(lines) if line.startswith(f"  {name} (")]
        assert "default " in lines[row], lines[row]
        assert lines[row + 1].strip() == descriptor.description
    assert "[read-only]" in result.stdout
