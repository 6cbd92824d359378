"""``make demo``: the closed loop over DDS (sim -> follower -> base on the simulated chip), end to end."""

import subprocess
import sys

from conftest import REPO_ROOT, ros_env


def test_demo_runs_the_closed_loop_and_stops_every_node_cleanly(tmp_path):
    command = [sys.executable, "-m", "ssd_ros.tools.demo", "--out", str(tmp_path), "--duration", "6"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT, env=ros_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    assert "process exit codes [0, 0, 0]" in summary and summary in result.stdout
    assert "after stop: motor duty 0.0, servo 300 ticks" in summary  # the base ended stopped and centred
    assert (tmp_path / "trajectory.png").stat().st_size > 0 and (tmp_path / "camera.gif").stat().st_size > 0
    for log in ("follower_sim", "follower", "picar_base"):
        assert "Traceback" not in (tmp_path / f"{log}.log").read_text(), log
