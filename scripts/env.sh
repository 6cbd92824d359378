# Source this file (bash) to use the ssd_ros workspace: venv + built packages + safe DDS defaults.
_ssd_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$_ssd_root/.venv/bin/activate"
# shellcheck disable=SC1091
. "$_ssd_root/install/setup.bash"
# Generated message modules import rosidl_parser from the venv: keep its bin first. PyPI has no `ros2 run`,
# so ssd_ros's executables (detector, make_bag, bag_eval, ...) go on PATH directly.
export PATH="$_ssd_root/.venv/bin:$_ssd_root/install/ssd_ros/lib/ssd_ros:$PATH"
# Keep DDS discovery on this machine unless the user opts out (multi-machine robot set-ups).
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
unset _ssd_root
