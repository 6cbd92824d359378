"""``ros2 launch <package> <file> [name:=value ...]`` for the launch tests, where PyPI has no ros2cli.

Does what ros2launch's ``launch_a_launch_file`` does: finds the file in the package's share directory,
includes it with the ``name:=value`` arguments through ``IncludeLaunchDescription`` (so the file's own
location is set), runs a ``LaunchService`` with the same ``argv`` and exits with its return code. The
launch service handles SIGINT/SIGTERM exactly as under ``ros2 launch``.

    python test/launch_runner.py ssd_ros rover.launch.py model_path:=best.pt
"""

from __future__ import annotations

import os
import signal
import sys

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription, LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import AnyLaunchDescriptionSource


def parse_arguments(arguments: list[str]) -> list[tuple[str, str]]:
    """``name:=value`` pairs in order, the last of a repeated name winning (as ros2launch)."""
    parsed = {}
    for argument in arguments:
        name, separator, value = argument.partition(":=")
        if not separator or not name:
            raise SystemExit(f"malformed launch argument {argument!r}, expected format '<name>:=<value>'")
        parsed[name] = value
    return list(parsed.items())


def main(argv: list[str]) -> int:
    package, file_name, *arguments = argv
    # A shell without job control starts background commands with SIGINT ignored (POSIX), an ignored signal stays
    # ignored across exec, and launch only hears SIGINT through Python's handler: under `make test &` (or a CI
    # runner that starts it so) the tests' SIGINT never reached the launch. Ctrl-C in a terminal, which they
    # stand for, always does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    path = os.path.join(get_package_share_directory(package), "launch", file_name)
    service = LaunchService(argv=arguments)
    service.include_launch_description(
        LaunchDescription(
            [IncludeLaunchDescription(AnyLaunchDescriptionSource(path), launch_arguments=parse_arguments(arguments))]
        )
    )
    return service.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
