# Source this file (bash) to use the ssd_ros workspace: venv + built packages + safe DDS defaults.
_ssd_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$_ssd_root/.venv/bin/activate"
# shellcheck disable=SC1091
. "$_ssd_root/install/setup.bash"
# Generated message modules import rosidl_parser from the venv: keep its bin first.
export PATH="$_ssd_root/.venv/bin:$PATH"
# Keep DDS discovery on this machine unless the user opts out (multi-machine robot set-ups).
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
unset _ssd_root
