#!/usr/bin/env bash
# Runs the whole test suite, or exactly the pytest arguments given (files, -k, ...), through run.sh.
set -eo pipefail
cd "$(dirname "$0")/.."
# Tests never join the shell's own domain (a robot may live there); SSD_ROS_TEST_DOMAIN_ID picks one.
if [ -n "$SSD_ROS_TEST_DOMAIN_ID" ]; then export ROS_DOMAIN_ID=$SSD_ROS_TEST_DOMAIN_ID; else unset ROS_DOMAIN_ID; fi
if [ $# -gt 0 ]; then exec scripts/run.sh python -m pytest "$@"; fi
# The whole suite in two pytest processes, by file: one process through all of it segfaulted near its end
# (at test_vision_msgs' last test, five runs out of five on 2026-12-07/08; each file passes after any single other
# one). A core dump shows a SIGSEGV the kernel forces when it cannot deliver a signal: a child's SIGCHLD, to the
# Python handler torch's DataLoader installs process-wide, on the alternate signal stack, which something earlier in
# the run left unusable (not found yet). Both halves always run; the status fails if either does.
files=(test/test_*.py)
half=$((${#files[@]} / 2))
status=0
scripts/run.sh python -m pytest "${files[@]:0:half}" || status=$?
scripts/run.sh python -m pytest "${files[@]:half}" || status=$?
exit $status
