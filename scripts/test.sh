#!/usr/bin/env bash
# Runs the whole test suite, or exactly the pytest arguments given (files, -k, ...), through run.sh.
set -eo pipefail
cd "$(dirname "$0")/.."
# Tests never join the shell's own domain (a robot may live there); SSD_ROS_TEST_DOMAIN_ID picks one.
if [ -n "$SSD_ROS_TEST_DOMAIN_ID" ]; then export ROS_DOMAIN_ID=$SSD_ROS_TEST_DOMAIN_ID; else unset ROS_DOMAIN_ID; fi
if [ $# -eq 0 ]; then set -- test; fi
exec scripts/run.sh python -m pytest "$@"
