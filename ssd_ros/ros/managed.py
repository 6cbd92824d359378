"""The base of ssd_ros's lifecycle (managed) nodes: rclpy.lifecycle's state machine with our conventions.

A subclass declares its parameters once (in ``__init__``: they exist, and ``ros2 param`` answers, in every
state) and implements :meth:`ManagedNode.configure` (read and validate the parameters, load what is slow to
load), :meth:`ManagedNode.activate` (create the topics, services and timers, registered with
:meth:`ManagedNode.own`) and :meth:`ManagedNode.cleanup` (release what configure loaded). Deactivation
destroys every owned entity, so an inactive node has no subscription left and DDS delivers it nothing; a
subclass that must do something first (the follower's zero command) does it in :meth:`ManagedNode.deactivate`.

A step that raises leaves the node in its previous state with one error line naming the reason, which stays
in :attr:`ManagedNode.problem` for diagnostics (rclpy itself would swallow the exception without a word).
With ``autostart`` (the default) :func:`ssd_ros.ros.runner.run_node` configures and activates the node at
start-up and exits non-zero when either step fails.
"""

from __future__ import annotations

import functools

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.exceptions import ParameterUninitializedException
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.publisher import Publisher
from rclpy.service import Service
from rclpy.subscription import Subscription
from rclpy.timer import Timer

from ssd_ros.ros.params import ParameterTable, declare_all, param
from ssd_ros.ros.runner import StartupError
from ssd_ros.ros.silence import warn_undeclared_parameters

AUTOSTART: ParameterTable = {
    "autostart": param(
        True,
        "configure and activate at start-up (a failure exits with status 1); false: stay unconfigured and wait "
        "for a lifecycle manager (change_state), a configure failure then leaves the node unconfigured",
        read_only=True,
    )
}

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class ManagedNode(LifecycleNode):
    """A lifecycle node whose transitions are plain methods that raise on failure."""

    def __init__(self, name: str, parameters: ParameterTable):
        """Declare ``parameters`` (and ``autostart``) and warn about given parameters the node does not have."""
        super().__init__(name)
        declare_all(self, {**AUTOSTART, **parameters})
        warn_undeclared_parameters(self)
        self._parameter_names = tuple(parameters)
        self.state_label = "unconfigured"
        self.problem = ""  # why the last transition failed, "" after a successful one
        self._owned: list = []

    # --- what subclasses implement ----------------------------------------------------------------------

    def configure(self, values: dict[str, object]) -> None:
        """Validate ``values`` (the parameters now) and load; raise with the reason on failure."""

    def activate(self) -> None:
        """Create topics, services and timers, each passed through :meth:`own`."""

    def deactivate(self) -> None:
        """What to do before the owned entities are destroyed (a final command)."""

    def release(self) -> None:
        """Destroy every owned entity: an idle node."""
        while self._owned:
            entity = self._owned.pop()
            if isinstance(entity, Publisher):
                self.destroy_publisher(entity)
            elif isinstance(entity, Subscription):
                self.destroy_subscription(entity)
            elif isinstance(entity, Timer):
                self.destroy_timer(entity)
            elif isinstance(entity, Service):
                self.destroy_service(entity)
            else:  # a helper owning entities of its own (InputWatcher)
                entity.destroy()

    def cleanup(self) -> None:
        """Release what :meth:`configure` loaded."""

    def own(self, entity):
        """Register ``entity`` to be destroyed on deactivation; returns it.

        A publisher, subscription, timer or service, or an object with ``destroy()``.
        """
        self._owned.append(entity)
        return entity

    @property
    def active(self) -> bool:
        """In the active state."""
        return self.state_label == "active"

    def while_active(self, callback):
        """``callback`` for an owned timer or subscription, run only while the node is active.

        rclpy's EventsExecutor may still run callbacks it queued for a timer or subscription that deactivate
        has destroyed: the follower's control tick then published on its destroyed ``cmd_vel`` (logged FATAL on
        most deactivations under a stream of detections), and the detector kept a frame from before it.
        """

        @functools.wraps(callback)
        def if_active(*args):
            if self.active:
                callback(*args)

        return if_active

    def lifecycle_status(self) -> tuple[bytes, str] | None:
        """Diagnostics level and message while the node does not do its job (None while active and well).

        ERROR with the reason after a failed transition (a configure that could not load the model); WARN while
        unconfigured or inactive, saying what it waits for, and once finalized (a shutdown transition while the
        process goes on), when only a new process can bring it back.
        """
        if self.problem:
            return DiagnosticStatus.ERROR, f"{self.state_label}: {self.problem}"
        if self.state_label == "unconfigured":
            return DiagnosticStatus.WARN, "unconfigured: waiting for a lifecycle manager's configure"
        if self.state_label == "inactive":
            return DiagnosticStatus.WARN, "inactive: waiting for a lifecycle manager's activate"
        if self.state_label == "finalized":
            return DiagnosticStatus.WARN, "finalized: shut down by a lifecycle manager; restart the process to use it"
        return None

    @property
    def autostart(self) -> bool:
        """Whether start-up configures and activates the node."""
        return self.get_parameter("autostart").value

    # --- rclpy.lifecycle's callbacks --------------------------------------------------------------------

    def on_configure(self, state) -> TransitionCallbackReturn:
        """Run :meth:`configure` on the current parameter values."""
        return self._step("configure", lambda: self.configure(self._current_values()), "inactive")

    def on_activate(self, state) -> TransitionCallbackReturn:
        """Run :meth:`activate`; what it created before failing is destroyed again."""
        result = self._step("activate", self.activate, "active")
        if result != SUCCESS:
            self.release()
        return result

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        """Run :meth:`deactivate`, then destroy the owned entities."""
        return self._step("deactivate", self._deactivate, "inactive")

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        """Run :meth:`cleanup`."""
        return self._step("cleanup", self.cleanup, "unconfigured")

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        """From any primary state: deactivate if active, release if configured."""

        def shut_down():
            if self.state_label == "active":
                self._deactivate()
            if self.state_label != "unconfigured":
                self.cleanup()

        return self._step("shutdown", shut_down, "finalized")

    def _current_values(self) -> dict[str, object]:
        """The parameters now; None for a typed one never set (an unset string array)."""
        values = {}
        for name in self._parameter_names:
            try:
                values[name] = self.get_parameter(name).value
            except ParameterUninitializedException:
                values[name] = None
        return values

    def _deactivate(self) -> None:
        try:
            self.deactivate()
        finally:
            self.release()

    def _step(self, name: str, step, goal: str) -> TransitionCallbackReturn:
        try:
            step()
        except Exception as error:  # noqa: BLE001 - rclpy.lifecycle would turn it into ERROR without a log line
            expected = isinstance(error, StartupError | ValueError)  # a reason written for the user
            self.problem = f"{name} failed: {error if expected else f'{type(error).__name__}: {error}'}"
            self.get_logger().error(f"{self.problem}; the node stays {self.state_label}")
            return FAILURE
        self.problem = ""
        self.state_label = goal
        self.get_logger().info(f"lifecycle: {name} -> {goal}")
        return SUCCESS
