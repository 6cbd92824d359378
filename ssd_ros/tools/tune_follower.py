"""Offline follower tuning: run the scripted paths in the closed-loop simulator (no ROS) and report.

Prints, per path, the settle time, overshoot and steady-state error of the follower against the
desired following distance, and saves a trajectory plot. Gains come from the follower's YAML so
what you tune here is what the node runs::

    python -m ssd_ros.tools.tune_follower --params config/rover.yaml config/follower.yaml \
        --plot docs/images/follower_sim.png

With ``--trials N`` it runs the scenarios with a second person (occlusions, crossings, id swaps) over seeds 0..N-1
instead and reports who was followed: the original target kept, re-acquired after its occlusion, taken
over by the other person, and the tracker's id switches per minute (a bar chart goes to ``--plot``)::

    python -m ssd_ros.tools.tune_follower --trials 20 --plot docs/images/follower_outcomes.png
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from tqdm import tqdm

from ssd_ros.cli import positive_rate, read_params_files
from ssd_ros.control.follow import FollowerSettings, FollowLoop, FollowParams
from ssd_ros.control.geometry import geometry_of
from ssd_ros.settings import settings_from_mapping
from ssd_ros.simulation.simulator import (
    MULTI_PERSON_SCENARIOS,
    SCENARIOS,
    FollowOutcome,
    Scenario,
    SimParams,
    Simulator,
    Target,
    Trace,
    desired_distance_m,
    follow_outcome,
    make_scenario,
    path_metrics,
    run_closed_loop,
)

DEFAULT_PATHS = ("static", "crossing", "circle", "stop_and_go", "two_people")


def simulate(
    names, follow_params: FollowParams, sim_params: SimParams, seeds, control_rate_hz: float, progress: bool = False
) -> dict[str, list[tuple[Scenario, Trace]]]:
    """Each named scenario in the closed loop, once per noise seed: name -> [(scenario, trace)] in seed order.

    The scenarios are scaled to the follower's desired distance; ``progress`` shows a bar on stderr.
    """
    distance = desired_distance(follow_params, sim_params)
    runs: dict[str, list[tuple[Scenario, Trace]]] = {name: [] for name in names}
    with tqdm(
        total=len(runs) * len(seeds), unit="run", desc="tune_follower", file=sys.stderr, disable=not progress
    ) as bar:
        for name in runs:
            for seed in seeds:
                scenario = make_scenario(name, distance, sim_params)
                sim = Simulator(sim_params, scenario, seed=seed)
                trace = run_closed_loop(FollowLoop(follow_params), sim, scenario.duration_s, control_rate_hz)
                runs[name].append((scenario, trace))
                bar.update()
    return runs


def desired_distance(follow_params: FollowParams, sim_params: SimParams) -> float:
    """Camera distance (m) at which the follower wants a person of the simulator's height."""
    return desired_distance_m(Target.height_m, follow_params.desired_height_fraction, sim_params)


def format_outcomes(results: dict[str, list[FollowOutcome]]) -> str:
    """Markdown table of the runs' outcomes: rates over the trials, id switches per minute of simulated time."""
    lines = [
        "| scenario | trials | target kept at the end | re-acquired after the occlusion (median delay) "
        "| taken over by the other person | id switches per minute |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        n = len(runs)
        kept = sum(r.kept_target for r in runs)
        taken = sum(r.taken_over for r in runs)
        minutes = sum(r.duration_s for r in runs) / 60.0
        switches = sum(r.id_switches for r in runs) / minutes if minutes else math.nan
        reacquired = "-"
        if runs[0].target_hidden_s is not None:
            delays = sorted(r.reacquired_after_s for r in runs if not math.isnan(r.reacquired_after_s))
            median = f", {delays[len(delays) // 2]:.1f} s" if delays else ""
            reacquired = f"{100 * len(delays) / n:.0f} %{median}"
        lines.append(
            f"| {name} | {n} | {100 * kept / n:.0f} % | {reacquired} | {100 * taken / n:.0f} % | {switches:.2f} |"
        )
    return "\n".join(lines)


def plot_outcomes(results: dict[str, list[FollowOutcome]], output: Path) -> None:
    """Bar chart: per scenario, the share of trials that kept the target and the share taken over."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    kept = [100 * np.mean([r.kept_target for r in results[n]]) for n in names]
    taken = [100 * np.mean([r.taken_over for r in results[n]]) for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 4))
    ax.bar(x - 0.2, kept, 0.4, color="C2", label="original target kept (%)")
    ax.bar(x + 0.2, taken, 0.4, color="C3", label="taken over by the other person (%)")
    ax.axhline(90, color="C2", ls=":", lw=1)
    ax.set_xticks(x, names, rotation=15)
    ax.set_ylim(0, 125)
    ax.set_title(f"follower with a second person, {len(next(iter(results.values())))} seeds each")
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=80)
    plt.close(fig)


def format_table(results) -> str:
    """Markdown table of the metrics."""
    lines = [
        "| path | settle time (s) | distance overshoot | bearing overshoot (deg) | steady bearing error (deg) "
        "| steady distance error | steering reversals |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (_, m, _) in results.items():
        settle = "not settled" if math.isnan(m.settle_time_s) else f"{m.settle_time_s:.1f}"
        lines.append(
            f"| {name} | {settle} | {100 * m.distance_overshoot:.1f} % | {m.bearing_overshoot_deg:.1f} "
            f"| {m.steady_bearing_deg:.1f} | {100 * m.steady_distance:.1f} % | {m.steering_sign_changes} |"
        )
    return "\n".join(lines)


def plot(results, output: Path) -> None:
    """Top-down trajectories (rover and targets) plus distance / bearing errors over time, one column per path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(2, len(results), figsize=(4.2 * len(results), 8), squeeze=False)
    for column, (name, (trace, _, distance)) in enumerate(results.items()):
        top, errors = axes[0, column], axes[1, column]
        rover = np.asarray(trace.rover)
        targets = np.asarray(trace.targets)
        top.plot(rover[:, 0], rover[:, 1], "b-", label="rover")
        top.plot(rover[0, 0], rover[0, 1], "bo")
        for k in range(targets.shape[1]):
            top.plot(
                targets[:, k, 0],
                targets[:, k, 1],
                "--",
                color="C3" if k == 0 else "C7",
                label="followed person" if k == 0 else "other person",
            )
            top.plot(targets[0, k, 0], targets[0, k, 1], "o", color="C3" if k == 0 else "C7")
        top.set_title(name)
        top.set_aspect("equal", adjustable="datalim")
        top.set_xlabel("x (m)")
        top.set_ylabel("y (m)")
        top.grid(True, alpha=0.3)
        top.legend(fontsize=7)
        t = np.asarray(trace.t)
        errors.plot(t, 100 * (np.asarray(trace.distance) / distance - 1), "g-", label="distance error (%)")
        errors.plot(t, np.degrees(trace.bearing), "m-", label="bearing error (deg)")
        errors.axhspan(-10, 10, color="g", alpha=0.08)
        errors.axhspan(-3, 3, color="m", alpha=0.12)
        errors.set_xlabel("time (s)")
        errors.grid(True, alpha=0.3)
        errors.legend(fontsize=7)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=SCENARIOS,
        help=f"scripted paths to run (default: {' '.join(DEFAULT_PATHS)}; "
        f"with --trials: {' '.join(MULTI_PERSON_SCENARIOS)})",
    )
    parser.add_argument(
        "--params",
        type=Path,
        nargs="+",
        default=[],
        help="the follower's parameter files, a later one winning as with --params-file: config/rover.yaml (the "
        "rover's geometry) and config/follower.yaml (default: built-in defaults)",
    )
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument(
        "--rate",
        type=positive_rate,
        help=f"control rate (Hz; default: the file's rate_hz, else {FollowerSettings.rate_hz:g})",
    )
    parser.add_argument("--latency", type=float, default=SimParams.latency_s, help="detector latency (s)")
    parser.add_argument(
        "--detection-rate", type=float, default=SimParams.detection_rate_hz, help="detector frame rate (Hz)"
    )
    parser.add_argument("--plot", type=Path, default=Path("follower_sim.png"), help="trajectory plot PNG")
    parser.add_argument(
        "--trials",
        type=int,
        default=0,
        help="run the scenarios with a second person over this many seeds and report who was followed",
    )
    args = parser.parse_args(argv)
    if args.trials < 0:
        parser.error(f"--trials must be >= 0 (0: the scripted paths), got {args.trials}")
    try:
        config = read_params_files(args.params, "follower")
        follow_params = settings_from_mapping(FollowParams, config)
        rate_hz = args.rate or settings_from_mapping(FollowerSettings, config).rate_hz
    except (TypeError, ValueError) as error:
        print(f"tune_follower: cannot use {' '.join(map(str, args.params))}: {error}", file=sys.stderr)
        return 2
    try:
        sim_params = SimParams(
            **geometry_of(follow_params),
            latency_s=args.latency,
            detection_rate_hz=args.detection_rate,
        )
    except ValueError as error:  # --latency / --detection-rate out of the simulator's range
        print(f"tune_follower: error: --latency / --detection-rate: {error}", file=sys.stderr)
        return 2
    if args.trials > 0:
        runs = simulate(
            args.paths or MULTI_PERSON_SCENARIOS, follow_params, sim_params, range(args.trials), rate_hz, progress=True
        )
        table = {name: [follow_outcome(trace, scenario) for scenario, trace in r] for name, r in runs.items()}
        print(format_outcomes(table))
        plot_outcomes(table, args.plot)
        print(f"plot: {args.plot}")
        return 0
    distance = desired_distance(follow_params, sim_params)
    runs = simulate(args.paths or DEFAULT_PATHS, follow_params, sim_params, [args.seed], rate_hz)
    results = {name: (trace, path_metrics(trace, distance), distance) for name, [(_, trace)] in runs.items()}
    print(
        f"desired distance {distance:.2f} m ({Target.height_m:g} m person at "
        f"{follow_params.desired_height_fraction:.2f} of the image height); "
        "settled = bearing within 3 deg and distance within 10 %"
    )
    print(format_table(results))
    plot(results, args.plot)
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
