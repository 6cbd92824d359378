#!/usr/bin/env bash
# Runs the whole test suite, or exactly the pytest arguments given (files, -k, ...), through run.sh.
set -eo pipefail
cd "$(dirname "$0")/.."
# Tests never join the shell's own domain (a robot may live there); SSD_ROS_TEST_DOMAIN_ID picks one.
if [ -n "$SSD_ROS_TEST_DOMAIN_ID" ]; then export ROS_DOMAIN_ID=$SSD_ROS_TEST_DOMAIN_ID; else unset ROS_DOMAIN_ID; fi
if [ $# -gt 0 ]; then exec scripts/run.sh python -m pytest "$@"; fi
# The whole suite in two pytest processes, by file: one process through all of it segfaulted near its end
# (at test_vision_msgs, three runs out of three on 2026-12-07, with no Python frame to show; not root-caused:
# each file passes after any single other one). Both halves always run; the status fails if either does.
files=(test/test_*.py)
half=$((${#files[@]} / 2))
status=0
scripts/run.sh python -m pytest "${files[@]:0:half}" || status=$?
scripts/run.sh python -m pytest "${files[@]:half}" || status=$?
exit $status
