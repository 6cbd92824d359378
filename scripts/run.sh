#!/usr/bin/env bash
# Run a command in the workspace with local-only DDS and its own domain id (tests, demos, benchmarks, tools).
# The command runs in the caller's folder, so its relative paths mean what they say.
set -eo pipefail
# shellcheck disable=SC1091
. "$(dirname "$0")/env.sh"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# A per-run domain (1..100) unless one is given, so parallel runs on one machine do not cross-talk.
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( ($$ % 100) + 1 ))}
echo "ROS_DOMAIN_ID=$ROS_DOMAIN_ID ROS_AUTOMATIC_DISCOVERY_RANGE=$ROS_AUTOMATIC_DISCOVERY_RANGE" >&2
exec "$@"
