"""Shared test helpers: paths, the real-data location, running the installed node executables, the test's own
ROS node (``RosProbe``), the one wait helper (``wait_until``), small checkpoints, and the ``ros`` marker.

Tests that start DDS participants (the test's own node, node processes) are marked ``ros`` automatically, those
of the modules that run networks or training ``slow``: ``make test-fast`` runs the rest (``-m "not ros and not
slow"``) and ``make test`` runs everything.
"""

from __future__ import annotations

import ast
import functools
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# The rover frames' classes (shared/data/picar_camera), in the sorted order class discovery gives.
PICAR_CLASSES = ("Green Traffic Light", "Person", "Red Traffic Light", "Speed Limit 25", "Speed Limit 40", "Stop Sign")
EXECUTABLES = REPO_ROOT / "install" / "ssd_ros" / "lib" / "ssd_ros"


# What starts DDS participants in a test: the test's own node, node processes (whose environment every child
# ROS process must take from ros_env). A test module naming one of them is marked ``ros``, so a new DDS test
# is never in the fast subset by mistake; an unmarked test that starts rclpy anyway fails (_no_dds_unless_marked).
DDS_ENTRY_POINTS = frozenset({"RosProbe", "start_executable", "ros_env"})
# Modules that build, train, export or run SSD networks (or augment thousands of samples): 7 of the 8 CPU minutes
# of the tests without DDS on the project's 2-core machine (pytest --durations). Marked ``slow``: ``make test-fast``
# leaves them to ``make test``.
SLOW_MODULES = frozenset(
    {
        "test_augment.py",
        "test_backends.py",
        "test_bag_eval.py",
        "test_checkpoint.py",
        "test_cpu.py",
        "test_detector.py",
        "test_evaluate.py",
        "test_export_model.py",
        "test_model.py",
        "test_model_file.py",
        "test_train.py",
    }
)


def pytest_configure(config):
    """Refuse to run ROS tests with discovery that could leave the machine; declare the ``ros`` marker."""
    if os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") != "LOCALHOST":
        raise pytest.UsageError("run the suite with scripts/test.sh (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST)")
    config.addinivalue_line(
        "markers", f"ros: starts DDS participants (automatic: the module names {sorted(DDS_ENTRY_POINTS)})"
    )
    config.addinivalue_line("markers", "slow: runs SSD networks or training (automatic: the module is in SLOW_MODULES)")


@functools.cache
def _starts_dds(path: str) -> bool:
    """Whether the test module at ``path`` names one of the DDS entry points."""
    tree = ast.parse(Path(path).read_text(), path)
    return any(isinstance(node, ast.Name) and node.id in DDS_ENTRY_POINTS for node in ast.walk(tree))


def pytest_collection_modifyitems(config, items):
    """Mark every test of a module that starts DDS participants ``ros``, of a slow module ``slow``."""
    for item in items:
        if _starts_dds(str(item.path)):
            item.add_marker(pytest.mark.ros)
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _no_dds_unless_marked(request, monkeypatch):
    """An rclpy context initialised by a test not marked ``ros`` fails it, naming the fix."""
    if request.node.get_closest_marker("ros") is not None:
        return
    try:
        from rclpy.context import Context
    except ImportError:  # no ROS installed (the aarch64 check's root): no DDS to guard against
        return

    def refuse(*args, **kwargs):
        raise RuntimeError(
            f"{request.node.nodeid} starts DDS without the ros marker: start it through conftest's "
            f"{', '.join(sorted(DDS_ENTRY_POINTS))} (marked automatically) or mark it @pytest.mark.ros"
        )

    monkeypatch.setattr(Context, "init", refuse)


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


def start_executable(
    name: str, *ros_args: str, log_path: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start an installed ssd_ros executable with ``--ros-args``; output goes to ``log_path`` or a pipe.

    ``env``: variables set (over :func:`ros_env`'s) for this process.
    """
    exe = EXECUTABLES / name
    assert exe.exists(), f"{exe} missing: run make setup"
    out = open(log_path, "w") if log_path else subprocess.PIPE  # noqa: SIM115 - closed with the process
    cmd = [sys.executable, str(exe), "--ros-args", *ros_args] if ros_args else [sys.executable, str(exe)]
    return subprocess.Popen(cmd, env=ros_env(**(env or {})), stdout=out, stderr=subprocess.STDOUT, text=True)


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


def wait_until(
    predicate: Callable[[], Any],
    timeout_s: float,
    what: str,
    *,
    detail: Callable[[], str] | None = None,
    step: Callable[[], Any] = lambda: time.sleep(0.02),
) -> Any:
    """Run ``step`` until ``predicate()`` is truthy and return it; on timeout fail naming ``what`` and ``detail()``.

    The one wait of the suite (``RosProbe.spin_until`` spins with it): tests wait for the event, never for a time.
    """
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}" + (f"; {detail()}" if detail else ""))
        step()
    return value


class RosProbe:
    """The test's own node, in an rclpy context of its own, with a single-threaded executor of its own.

    The test spins it (``spin_once``, ``spin_for``, ``spin_until``, ``call``), or with ``background=True`` a
    daemon thread does and those only wait. A context of its own keeps the test's init and shutdown apart
    from the default context that in-process nodes under test use; ``context=`` joins an initialised context
    instead (left running by ``close``), so that nodes under test can be added to ``executor``. A context
    manager, or call ``close``.
    """

    def __init__(self, name: str, *, background: bool = False, context: Any = None):
        """Create the node ``name`` (and initialise a context for it unless ``context`` is given)."""
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self._owns_context = context is None
        self.context = Context() if context is None else context
        if self._owns_context:
            rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self.executor.spin, daemon=True) if background else None
        if self._spinner is not None:
            self._spinner.start()

    def __enter__(self) -> RosProbe:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop the executor, destroy the node, shut down the context if it is this probe's."""
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        if self._owns_context:
            rclpy.try_shutdown(context=self.context)
        if self._spinner is not None:
            self._spinner.join(5)

    def spin_once(self, timeout_s: float = 0.02) -> None:
        """Run what is ready, waiting up to ``timeout_s`` for it (with a background spinner: just wait)."""
        if self._spinner is None:
            self.executor.spin_once(timeout_sec=timeout_s)
        else:
            time.sleep(timeout_s)

    def spin_for(self, seconds: float) -> None:
        """Spin for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.spin_once()

    def spin_until(self, predicate: Callable[[], Any], timeout_s: float, what: str, *, detail=None) -> Any:
        """Spin until ``predicate()`` is truthy and return it; on timeout fail naming ``what`` and ``detail()``."""
        return wait_until(predicate, timeout_s, what, detail=detail, step=self.spin_once)

    def call(self, srv_type: Any, service: str, request: Any, timeout_s: float = 10.0, attempts: int = 3) -> Any:
        """The response of ``service`` to ``request``, once the service is discovered (within ``timeout_s``).

        The request is sent again when no reply came within ``timeout_s``, up to ``attempts`` times: under load
        Fast DDS can drop a reply whose reader the server has not matched yet ("failed to send response
        (timeout): client will not receive response"). So only for idempotent requests (parameter services).
        """
        client = self.node.create_client(srv_type, service)
        try:
            self.spin_until(client.service_is_ready, timeout_s, f"service {service}")
            for _ in range(attempts):
                future = client.call_async(request)
                deadline = time.monotonic() + timeout_s
                while not future.done() and time.monotonic() < deadline:
                    self.spin_once()
                if future.done():
                    return future.result()
                client.remove_pending_request(future)
            pytest.fail(f"no reply from {service} to {attempts} requests, {timeout_s} s each")
        finally:
            self.node.destroy_client(client)

    def change_state(self, node: str, transition: int, timeout_s: float) -> bool:
        """Ask ``node`` for lifecycle ``transition`` once (a second request would be a second transition).

        Returns whether it succeeded. Without a reply (see :meth:`call`: Fast DDS can drop the reply to a
        brand-new client), ``get_state``, which is safe to ask again, says whether the node reached the
        transition's goal state.
        """
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState, GetState

        client = self.node.create_client(ChangeState, f"{node}/change_state")
        try:
            self.spin_until(client.service_is_ready, timeout_s, f"service {node}/change_state")
            future = client.call_async(ChangeState.Request(transition=Transition(id=transition)))
            deadline = time.monotonic() + timeout_s
            while not future.done() and time.monotonic() < deadline:
                self.spin_once()
            if future.done():
                return future.result().success
            client.remove_pending_request(future)
        finally:
            self.node.destroy_client(client)
        # The state each transition ends in when it succeeds (a failed one leaves the node where it was).
        goals = {
            Transition.TRANSITION_CONFIGURE: "inactive",
            Transition.TRANSITION_ACTIVATE: "active",
            Transition.TRANSITION_DEACTIVATE: "inactive",
            Transition.TRANSITION_CLEANUP: "unconfigured",
            Transition.TRANSITION_UNCONFIGURED_SHUTDOWN: "finalized",
            Transition.TRANSITION_INACTIVE_SHUTDOWN: "finalized",
            Transition.TRANSITION_ACTIVE_SHUTDOWN: "finalized",
        }
        reached = self.call(GetState, f"{node}/get_state", GetState.Request(), timeout_s).current_state.label
        return reached == goals[transition]


def make_checkpoint(
    path: Path,
    class_names: Sequence[str] | None = None,
    architecture: str = "ssdlite320_mobilenet_v3",
    *,
    model: Any = None,
    dataset: str = "none (random init, test)",
) -> Path:
    """``model`` saved with its ModelCard through the real checkpoint writer; returns ``path``.

    The model defaults to ``architecture`` randomly initialised from seed 0 (the global torch RNG is left
    alone), the classes to VOC's.
    """
    import torch

    from ssd_ros.vision.checkpoint import save_checkpoint
    from ssd_ros.vision.model import VOC_CLASSES
    from ssd_ros.vision.model_card import ModelCard

    card = ModelCard.for_architecture(
        architecture, VOC_CLASSES if class_names is None else class_names, dataset=dataset
    )
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = card.build_model()
    return save_checkpoint(path, model, card)


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


def save_named_by_hash(obj, directory: Path, stem: str) -> Path:
    """``torch.save`` ``obj`` as ``<stem>-<first 8 hex of its sha256>.pth``, as torchvision names its files."""
    import hashlib

    import torch

    directory.mkdir(parents=True, exist_ok=True)
    scratch = directory / f"{stem}.tmp"
    torch.save(obj, scratch)
    digest = hashlib.sha256(scratch.read_bytes()).hexdigest()
    return scratch.rename(directory / f"{stem}-{digest[:8]}.pth")


def torchvision_coco_model(architecture: str, seed: int = 0):
    """The model torchvision's own builder makes for the COCO ``architecture`` weights (91 outputs), random.

    The weights stand in for the published ones (no internet in tests): the right shapes, seeded, with the
    SSDlite's convolutions re-initialised so that its scores spread (see :func:`lively_ssdlite`).
    """
    import torch
    from torchvision.models.detection import ssd300_vgg16, ssdlite320_mobilenet_v3_large

    builders = {"ssd300_vgg16": ssd300_vgg16, "ssdlite320_mobilenet_v3": ssdlite320_mobilenet_v3_large}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builders[architecture](weights=None, weights_backbone=None, num_classes=91)
        if architecture == "ssdlite320_mobilenet_v3":
            for module in model.modules():
                if isinstance(module, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model.eval()


def plant_coco_weights(monkeypatch, architecture: str, state_dict) -> Path:
    """Put ``state_dict`` in the test's torch hub cache as the COCO ``architecture`` weight file; its path.

    Named as torchvision names its files (``<stem>-<sha256 prefix>.pth``), with the weights entry's URL pointed
    at that name on a port that refuses at once: loading finds the file in the cache and checks its hash as it
    checks the published file's, and nothing is downloaded. Use with the ``torch_hub_cache`` fixture.
    """
    from ssd_ros.vision.model import cached_weights_path, coco_weights

    weights = coco_weights(architecture)
    published = cached_weights_path(weights)  # e.g. ssdlite320_mobilenet_v3_large_coco-a79551df.pth
    planted = save_named_by_hash(state_dict, published.parent, published.stem.rsplit("-", 1)[0])
    monkeypatch.setattr(weights.value, "url", f"http://127.0.0.1:9/{planted.name}")
    return planted


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

    from ssd_ros.vision.model import build_model

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
