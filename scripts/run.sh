#!/usr/bin/env bash
# Run a command in the workspace with local-only DDS and its own domain id (tests, demos, benchmarks, tools).
set -eo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. scripts/env.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# A per-run domain (1..100) unless one is given, so parallel runs on one machine do not cross-talk.
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( ($$ % 100) + 1 ))}
echo "ROS_DOMAIN_ID=$ROS_DOMAIN_ID ROS_AUTOMATIC_DISCOVERY_RANGE=$ROS_AUTOMATIC_DISCOVERY_RANGE" >&2
exec "$@"
