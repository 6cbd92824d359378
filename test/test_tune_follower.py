"""tune_follower's command line: values the simulator cannot run are refused with a clear error, not run or crashed."""

from __future__ import annotations

import pytest

from ssd_ros.tools import tune_follower


@pytest.mark.parametrize("rate", ["0", "-5", "nan", "inf"])
def test_a_control_rate_that_is_not_a_finite_positive_number_is_refused(tmp_path, capsys, rate):
    """0 used to run at the file's rate and -5 at the physics rate (200 Hz), each printing a table as if asked for."""
    plot = tmp_path / "sim.png"
    with pytest.raises(SystemExit) as exit_info:
        tune_follower.main(["--paths", "static", "--rate", rate, "--plot", str(plot)])
    assert exit_info.value.code == 2
    assert f"--rate: must be a finite rate > 0 Hz (leave it out for the default), got {rate}" in capsys.readouterr().err
    assert not plot.exists()


def test_simulator_settings_out_of_range_are_an_error_not_a_traceback(tmp_path, capsys):
    """--detection-rate 0 and --latency -1 used to end in a ValueError traceback from SimParams."""
    for option, value, message in (
        ("--detection-rate", "0", "detection_rate_hz must be in [0.1, 1000], got 0.0"),
        ("--latency", "-1", "latency_s must be in [0, 10], got -1.0"),
    ):
        status = tune_follower.main(["--paths", "static", option, value, "--plot", str(tmp_path / "sim.png")])
        assert status == 2
        assert f"tune_follower: error: --latency / --detection-rate: {message}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tune_follower.main(["--trials", "-3", "--plot", str(tmp_path / "sim.png")])
    assert "--trials must be >= 0 (0: the scripted paths), got -3" in capsys.readouterr().err
    assert not (tmp_path / "sim.png").exists()
