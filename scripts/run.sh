#!/usr/bin/env bash
# Run a command in the workspace with local-only DDS and its own domain id (demos, benchmarks, tools).
set -eo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. scripts/env.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( ($$ % 100) + 1 ))}
exec "$@"
