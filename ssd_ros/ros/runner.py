"""One ``main()`` for every ssd_ros node: start-up errors, Ctrl-C / SIGTERM and the final safe action."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TypeVar

import rclpy
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

NodeT = TypeVar("NodeT", bound=Node)

# How often the spin loop wakes up even with nothing to do: with use_sim_time and a silent /clock no
# timer fires, and a wait that never returns would never let Python handle Ctrl-C.
SPIN_PERIOD_S = 0.1


class StartupError(Exception):
    """The node cannot start (bad parameter, checkpoint or hardware); the message says why."""


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_node(
    name: str,
    factory: Callable[[], NodeT],
    on_stop: Callable[[NodeT], None] | None = None,
    args: list[str] | None = None,
) -> int:
    """Build the node with ``factory`` and spin it until Ctrl-C or SIGTERM.

    ``on_stop`` runs once after spinning ends (a final zero command, stop + centre) with SIGINT and
    SIGTERM ignored, so a second Ctrl-C or launch's follow-up SIGTERM cannot cut it short.

    Returns:
        0 after a clean stop; 1 when the node cannot start (``StartupError``, ``ValueError`` or an invalid
        parameter), after one ``cannot start: <reason>`` log line and no traceback.
    """
    # rclpy's own signal handlers would shut the context down before ``on_stop`` could publish, so Python's
    # KeyboardInterrupt (with SIGTERM mapped onto it) is what ends spinning.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        node = factory()
    except (StartupError, ValueError, InvalidParameterTypeException, InvalidParameterValueException) as error:
        rclpy.logging.get_logger(name).fatal(f"cannot start: {error}")
        rclpy.try_shutdown()
        return 1
    except KeyboardInterrupt:  # Ctrl-C while loading a model
        rclpy.try_shutdown()
        return 0
    try:
        while rclpy.ok():
            rclpy.spin_once(node, timeout_sec=SPIN_PERIOD_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if on_stop is not None:
            on_stop(node)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
