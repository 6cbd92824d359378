"""One ``main()`` for every ssd_ros node: start-up errors, Ctrl-C / SIGTERM and the final safe action."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable
from typing import TypeVar

import rclpy
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException, NameValidationException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from rclpy.utilities import remove_ros_args

from ssd_ros.cli import EXECUTOR_ENV, EXECUTORS
from ssd_ros.ros.params import ParameterTable

NodeT = TypeVar("NodeT", bound=Node)

# How often the spin loop wakes up even with nothing to do: with use_sim_time and a silent /clock no
# timer fires, and a wait that never returns would never let Python handle Ctrl-C.
SPIN_PERIOD_S = 0.1


class StartupError(Exception):
    """The node cannot start (bad parameter, checkpoint or hardware); the message says why."""


# Every signal that usually ends a process: Ctrl-C, launch/systemd (SIGTERM), a dropped SSH session (SIGHUP)
# and Ctrl-\\ (SIGQUIT). Each must end in ``on_stop`` (motor off), never in a process that just vanishes.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def _type_and_default(default: object) -> tuple[str, str]:
    if default is Parameter.Type.STRING_ARRAY:  # typed but unset (see params.STRING_ARRAY)
        return "string[]", "unset"
    kinds = {bool: "bool", int: "integer", float: "double", str: "string"}
    if isinstance(default, list):
        element = kinds.get(type(default[0]), "") if default else ""
        return f"{element}[]", repr(default)
    return kinds.get(type(default), type(default).__name__), repr(default)


def format_help(name: str, summary: str, parameters: ParameterTable) -> str:
    """``<name> --help``: how to start the node, then every parameter with type, default and description."""
    lines = [
        f"usage: {name} [--help] [--ros-args [--params-file FILE] [-p NAME:=VALUE ...] [-r FROM:=TO ...]]",
        "",
        summary,
        "",
        "parameters (set with -p NAME:=VALUE or a --params-file; [read-only] ones only at start-up):",
    ]
    for parameter, (default, descriptor) in parameters.items():
        kind, shown = _type_and_default(default)
        ranges = [*descriptor.integer_range, *descriptor.floating_point_range]
        limits = f", {ranges[0].from_value:g} to {ranges[0].to_value:g}" if ranges else ""
        read_only = " [read-only]" if descriptor.read_only else ""
        lines.append(f"  {parameter} ({kind}, default {shown}{limits}){read_only}")
        lines.append(f"      {descriptor.description}")
    return "\n".join(lines)


def run_node(
    name: str,
    factory: Callable[[], NodeT],
    on_stop: Callable[[NodeT], bool] | None = None,
    args: list[str] | None = None,
    parameters: ParameterTable | None = None,
) -> int:
    """Build the node with ``factory`` and spin it until a stop signal (Ctrl-C, SIGTERM, SIGHUP, SIGQUIT).

    With ``-h``/``--help`` among the arguments outside ``--ros-args``, print :func:`format_help` for
    ``parameters`` (the node's table; the first line of ``factory``'s docstring says what it is) and
    return 0 without starting anything.

    A lifecycle node (:class:`ssd_ros.ros.managed.ManagedNode`) with ``autostart`` is configured and activated
    before spinning; a failure of either step is a failure to start. Without ``autostart`` it waits, unconfigured,
    for a lifecycle manager.

    ``on_stop`` runs once after spinning ends (a final zero command, stop + centre) with further stop
    signals ignored, so a second Ctrl-C or launch's follow-up SIGTERM cannot cut it short, and returns whether
    that final action was confirmed (False: the process exits 1, so launch and systemd see it); a lifecycle node
    then takes its shutdown transition (deactivate, cleanup). An exception escaping a callback (a bug, or
    input nobody foresaw) is logged and the node keeps running.

    The node spins in :func:`make_executor`'s executor of :data:`EXECUTOR_ENV`'s choice (an unknown one is a
    failure to start).

    Returns:
        0 after a clean stop or ``--help``; 1 when the node cannot start (``StartupError``, ``ValueError``, an invalid
        parameter, a failed autostart), after one ``cannot start: <reason>`` log line and no traceback, or when
        ``on_stop`` could not confirm the final safe action (it logs why).
    """
    logger = rclpy.logging.get_logger(name)
    try:
        user_args = remove_ros_args(sys.argv if args is None else args)[1:]
    except Exception as error:  # noqa: BLE001 - rclpy's (private) RCLInvalidROSArgsError: a malformed --ros-args rule
        logger.fatal(f"cannot start: {error}")
        return 1
    if parameters is not None and ("-h" in user_args or "--help" in user_args):
        summary = re.sub(r":\w+:`~?([^`]+)`", r"\1", (factory.__doc__ or name).strip().splitlines()[0])  # Sphinx roles
        print(format_help(name, summary, parameters))
        return 0
    try:
        executor = executor_choice()
    except ValueError as error:
        logger.fatal(f"cannot start: {error}")
        return 1
    node, status = _start_node(factory, args, logger)
    if node is None:
        return status
    if isinstance(node, LifecycleNode) and node.autostart and (status := _autostart(node, logger)) is not None:
        node.destroy_node()
        rclpy.try_shutdown()
        return status
    return _spin_until_stopped(node, on_stop, logger, executor)


def _start_node(factory: Callable[[], NodeT], args: list[str] | None, logger) -> tuple[NodeT | None, int]:
    """Initialise rclpy and build the node: ``(node, 0)``, or ``(None, exit status)`` when it does not start."""
    try:
        # rclpy's own signal handlers would shut the context down before ``on_stop`` could publish.
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as error:  # noqa: BLE001 - rclpy's (private) RCLError, e.g. a malformed --ros-args rule
        logger.fatal(f"cannot start: {error}")
        return None, 1
    for signum in STOP_SIGNALS:  # while building (loading a model can take seconds): a plain interrupt
        signal.signal(signum, signal.default_int_handler)
    try:
        node = factory()
    except (
        StartupError,
        ValueError,
        InvalidParameterTypeException,
        InvalidParameterValueException,
        NameValidationException,  # e.g. image_topic:="bad topic!"
    ) as error:
        logger.fatal(f"cannot start: {error}")
        rclpy.try_shutdown()
        return None, 1
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return None, 0
    return node, 0


def _autostart(node, logger) -> int | None:
    """Configure and activate a lifecycle node: None once active, else the exit status (1: a step failed)."""
    try:
        for step in (node.trigger_configure, node.trigger_activate):
            if step() != TransitionCallbackReturn.SUCCESS:
                logger.fatal(f"cannot start: {node.problem}")
                return 1
    except KeyboardInterrupt:  # a stop signal while the model loads
        return 0
    return None


def executor_choice() -> str:
    """``events`` or ``single``, from :data:`EXECUTOR_ENV` (unset or empty: ``events``); ValueError otherwise."""
    choice = os.environ.get(EXECUTOR_ENV, "").strip().lower() or "events"
    if choice not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_ENV}={os.environ[EXECUTOR_ENV]!r}: expected one of {', '.join(EXECUTORS)}")
    return choice


def make_executor(choice: str = "events"):
    """The executor a node spins: rclpy's EventsExecutor for ``events``, a SingleThreadedExecutor for ``single``.

    The events executor dispatches from C++: in the detector a camera frame reached its callback in 1.6-1.9 ms
    instead of 2.0-2.4, and the inference thread took it over in 0.3-0.4 ms instead of 0.8-1.2 (VGA rgb8, 2 cores;
    ``benchmarks/bench_inference.py``'s node timeline). It is still under ``rclpy.experimental`` and needs rclpy
    >= 7.1.4 (Jazzy's backport): with an older rclpy ``events`` falls back to the SingleThreadedExecutor, and
    ``single`` (:data:`EXECUTOR_ENV`) is the way back should it misbehave on a robot.
    """
    if choice == "events":
        try:
            from rclpy.experimental.events_executor import EventsExecutor
        except ImportError:
            return SingleThreadedExecutor()
        # Spun with spin_once from the main thread only: its spin() in a second thread held the GIL here.
        return EventsExecutor()
    return SingleThreadedExecutor()


def _spin_until_stopped(node: NodeT, on_stop: Callable[[NodeT], bool] | None, logger, executor_kind: str) -> int:
    """Spin until a stop signal, run ``on_stop`` with further signals ignored and release everything.

    Returns the exit status: 0, or 1 when ``on_stop`` could not confirm the final safe action.
    """
    # While spinning, a signal only raises a flag: an exception injected into rclpy's C++ bindings (in the
    # middle of taking a message) would surface there as an unrelated RuntimeError and a traceback.
    stop = []
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda signum, frame: stop.append(signum))
    executor = make_executor(executor_kind)
    logger.info(f"spinning with rclpy's {type(executor).__name__} ({EXECUTOR_ENV}=events | single)")
    executor.add_node(node)
    status = 0
    try:
        while rclpy.ok() and not stop:
            try:
                executor.spin_once(timeout_sec=SPIN_PERIOD_S)
            except ExternalShutdownException:
                break
            except Exception as error:  # noqa: BLE001 - one bad callback must not take the node down
                logger.error(
                    f"callback failed, node keeps running: {type(error).__name__}: {error}",
                    throttle_duration_sec=5.0,
                )
    finally:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        try:
            # on_stop handles the faults it expects itself: anything raised here is a bug, shown as one.
            if on_stop is not None and not on_stop(node):
                status = 1
            if isinstance(node, LifecycleNode) and node.state_label != "finalized" and rclpy.ok():
                node.trigger_shutdown()
        finally:
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown()
    return status
