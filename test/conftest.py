"""Shared test helpers: paths, the real-data location, and running the installed node executables."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# The rover frames' classes (shared/data/picar_camera), in the sorted order class discovery gives.
PICAR_CLASSES = ("Green Traffic Light", "Person", "Red Traffic Light", "Speed Limit 25", "Speed Limit 40", "Stop Sign")
EXECUTABLES = REPO_ROOT / "install" / "ssd_ros" / "lib" / "ssd_ros"


def pytest_configure(config):
    """Refuse to run ROS tests with discovery that could leave the machine."""
    if os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") != "LOCALHOST":
        raise pytest.UsageError("run the suite with scripts/test.sh (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST)")


# CI (CI=true, as CI services set it) always has ../shared/data: there a missing file is a broken set-up,
# and a skipped data test would hide it.
IN_CI = os.environ.get("CI", "").lower() == "true"


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data; when it is absent: skips the calling test with a reason, fails it under CI."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        reason = f"real test data not found at {path} (../shared/data is not part of a fresh clone)"
        if IN_CI:
            pytest.fail(f"{reason}; CI=true, where the data must be present", pytrace=False)
        pytest.skip(reason)
    return path


def ros_env(**extra: str) -> dict[str, str]:
    """Environment for a child ROS process: local-only discovery, this run's domain id."""
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("ROS_DOMAIN_ID", "42")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start_executable(name: str, *ros_args: str, log_path: Path | None = None) -> subprocess.Popen:
    """Start an installed ssd_ros executable with ``--ros-args``; output goes to ``log_path`` or a pipe."""
    exe = EXECUTABLES / name
    assert exe.exists(), f"{exe} missing: run make setup"
    out = open(log_path, "w") if log_path else subprocess.PIPE  # noqa: SIM115 - closed with the process
    cmd = [sys.executable, str(exe), "--ros-args", *ros_args] if ros_args else [sys.executable, str(exe)]
    return subprocess.Popen(cmd, env=ros_env(), stdout=out, stderr=subprocess.STDOUT, text=True)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGINT (like Ctrl-C), then kill if it does not exit; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture
def torch_hub_cache(tmp_path, monkeypatch):
    """An empty torch hub cache of the test's own (``$TORCH_HOME``), returned as its checkpoints folder.

    Sockets time out after 5 s meanwhile, so a download test never hangs on a network. (Not by patching
    ``socket._GLOBAL_DEFAULT_TIMEOUT``: that is a sentinel urllib compares by identity, and replacing it makes
    every connection fail with a TypeError before it is even tried.)
    """
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5.0)
    yield tmp_path / "torch" / "hub" / "checkpoints"
    socket.setdefaulttimeout(previous)


def forged_png(width: int, height: int) -> bytes:
    """A tiny PNG whose (valid, CRC-checked) header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(bytes(64)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def lively_ssdlite(num_classes: int = 21):
    """An untrained SSDlite whose scores spread (torchvision's std-0.03 init gives every box the same score)."""
    import torch

    from ssd_ros.model import build_model

    torch.manual_seed(0)
    model = build_model("ssdlite320_mobilenet_v3", num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model


def assert_same_detections(reference, other, *, box_px: float, score: float) -> None:
    """Each ``reference`` detection has its own counterpart in ``other``: same class, box and score close.

    Matched as sets (greedy by box distance), since near-equal scores may swap places between two runtimes.
    """
    import numpy as np

    assert len(other) == len(reference), (len(other), len(reference))
    free = np.ones(len(other), bool)
    for box, s, label in zip(reference.boxes, reference.scores, reference.labels):
        distance = np.abs(other.boxes - box).max(axis=1)
        candidates = free & (other.labels == label) & (np.abs(other.scores - s) <= score) & (distance <= box_px)
        assert candidates.any(), f"no counterpart for {label} {s:.4f} {box}"
        free[np.flatnonzero(candidates)[np.argmin(distance[candidates])]] = False
