#!/usr/bin/env bash
# Runs the whole test suite in the workspace with local-only DDS and a per-run domain id.
set -eo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. scripts/env.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# A per-run domain (1..101) so parallel runs on one machine do not cross-talk.
export ROS_DOMAIN_ID=${SSD_ROS_TEST_DOMAIN_ID:-$(( ($$ % 100) + 1 ))}
echo "ROS_DOMAIN_ID=$ROS_DOMAIN_ID ROS_AUTOMATIC_DISCOVERY_RANGE=$ROS_AUTOMATIC_DISCOVERY_RANGE"
# No arguments: the whole suite; otherwise exactly what was asked for (files, -k, ...).
if [ $# -eq 0 ]; then set -- test; fi
exec python -m pytest "$@"
