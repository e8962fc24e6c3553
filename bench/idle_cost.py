"""Replay a day of bursty task arrivals through the seed's idle shutdown and ours; print idle GPU-minutes, killed
tasks and cost against the floor (stopping the moment the last task ends). The model is in bench/idle_sim.py.

`ours` runs the project's real decision code (functions.shutdown.decision via the Lambda's schedule, and
adapter.autostop on the node); `ours-lambda-only` switches the on-node autostop off to show the backstop alone;
`ours-<N>min` is ours with a lower idle window. Exits 1 if any of ours kills a running task.

Usage: python bench/idle_cost.py [--seed 7] [--start-min 3] [--metric-delay-min 3] [--sweep 8] ...
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a script from anywhere

from bench.idle_sim import DAY, Gpu, Params, Task, simulate, workload  # noqa: E402
from core.idle import Policy  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=7, help="workload seed (fixed: the same day every run)")
    ap.add_argument("--start-min", type=float, default=3.0, help="EC2 start until the adapter polls (billed)")
    ap.add_argument("--stop-min", type=float, default=1.0, help="time in `stopping` (not billed, cannot start)")
    ap.add_argument("--metric-delay-min", type=float, default=3.0, help="SQS -> CloudWatch publication lag")
    ap.add_argument("--wake-delay-min", type=float, default=15.0, help="no metrics this long after a queue wakes")
    ap.add_argument("--inactive-hours", type=float, default=6.0, help="quiet this long and SQS stops publishing")
    ap.add_argument("--window-min", type=float, default=30.0, help="idle window (seed alarm: 6 x 5 min)")
    ap.add_argument("--min-uptime-min", type=float, default=10.0)
    ap.add_argument("--lower-window-min", type=float, default=10.0, help="also run ours with this window")
    ap.add_argument("--tail-hours", type=float, default=6.0, help="keep simulating (no arrivals) after the day")
    ap.add_argument("--races", type=int, default=2, help="tasks submitted 10 s into a stop (failure 4)")
    ap.add_argument("--price", type=float, default=1.006, help="USD per instance-hour (g5.xlarge on-demand)")
    ap.add_argument("--sweep", type=int, default=0, help="also replay seeds 1..N (floor, seed, ours) and sum them")
    return ap.parse_args(argv)


def run_day(args: argparse.Namespace, seed: int, names: tuple[str, ...]) -> tuple[list[Task], dict[str, Gpu]]:
    policy = Policy(idle_window_s=args.window_min * 60, min_uptime_s=args.min_uptime_min * 60)
    prm = Params(
        int(args.start_min * 60),
        int(args.stop_min * 60),
        int(args.inactive_hours * 3600),
        int(args.metric_delay_min * 60),
        int(args.wake_delay_min * 60),
        policy,
        races=args.races,
    )
    horizon = DAY + int(args.tail_hours * 3600)
    tasks = workload(seed)
    variants = {
        "floor": ("floor", prm),
        "seed": ("seed", prm),
        "ours": ("ours", prm),
        "ours-lambda-only": ("ours", replace(prm, poll_s=horizon + 1)),  # the adapter never checks for idleness
        f"ours-{args.lower_window_min:g}min": (
            "ours",
            replace(prm, policy=replace(policy, idle_window_s=args.lower_window_min * 60)),
        ),
    }
    return tasks, {
        name: simulate(kind, tasks, p, horizon) for name, (kind, p) in variants.items() if name in names or not names
    }


def idle_min(g: Gpu) -> float:
    """Billed minutes with no task executing."""
    return (g.billed_s - g.busy_s) / 60


def waste_min(g: Gpu) -> float:
    """Billed minutes that bought nothing: idle, plus runs that were killed before they finished."""
    return (g.billed_s - g.busy_s + g.wasted_s) / 60


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    tasks, results = run_day(args, args.seed, ())
    print(
        f"seed {args.seed}: {len(tasks)} tasks, {sum(t.duration for t in tasks) / 60:.0f} GPU-min of work, longest "
        f"{max(t.duration for t in tasks) / 60:.0f} min; start {args.start_min} min, metric delay "
        f"{args.metric_delay_min} min (+{args.wake_delay_min} after a wake), window {args.window_min} min, "
        f"${args.price}/h, {args.races} submit(s) racing a stop"
    )
    floor = results["floor"]
    head = (
        f"{'policy':<17}{'billed':>7}{'idle':>6}{'waste':>7}{'over floor':>11}{'killed':>7}{'lost':>5}{'left':>5}"
        f"{'starts':>7}{'max wait':>9}{'on at end':>10}{'cost $':>8}{'x floor':>8}"
    )
    print(head + "\n" + "-" * len(head))
    for name, g in results.items():
        left = len(tasks) + min(args.races, len(g.stops_at)) - g.done - g.lost
        print(
            f"{name:<17}{g.billed_s / 60:>7.0f}{idle_min(g):>6.0f}{waste_min(g):>7.0f}"
            f"{waste_min(g) - waste_min(floor):>11.0f}{g.kills:>7}{g.lost:>5}{left:>5}{g.starts:>7}"
            f"{max(g.waits, default=0) / 60:>9.0f}{str(g.state != 'stopped'):>10}"
            f"{g.billed_s / 3600 * args.price:>8.2f}{g.billed_s / max(floor.billed_s, 1):>8.2f}"
        )
    seed, ours = results["seed"], results["ours"]
    print(
        f"seed / ours: waste {waste_min(seed) / max(waste_min(ours), 1):.2f}, cost "
        f"{seed.billed_s / max(ours.billed_s, 1):.2f}; the seed killed {seed.kills} run(s), "
        f"{seed.wasted_s / 60:.0f} GPU-min of work thrown away.\nminutes throughout. idle: billed with no task "
        "executing (boot included); waste: idle + killed runs; over floor: waste above the floor's; max wait: "
        "arrival to first receive; left: never finished; floor: stop the moment the last task ends."
    )
    killed = sum(g.kills for name, g in results.items() if name.startswith("ours"))
    if args.sweep:
        names = ("floor", "seed", "ours", f"ours-{args.lower_window_min:g}min")
        totals = {name: [0.0, 0.0, 0, 0] for name in names}
        for seed_n in range(1, args.sweep + 1):
            for name, g in run_day(args, seed_n, names)[1].items():
                totals[name][0] += g.billed_s / 60
                totals[name][1] += waste_min(g)
                totals[name][2] += g.kills
                totals[name][3] += g.state != "stopped"
                killed += g.kills if name.startswith("ours") else 0
        print(
            f"\nseeds 1..{args.sweep}, summed:\n{'policy':<17}{'billed':>8}{'waste':>8}{'over floor':>11}"
            f"{'killed':>7}{'days left on':>13}{'x floor':>8}"
        )
        for name, (billed, waste, kills, left_on) in totals.items():
            print(
                f"{name:<17}{billed:>8.0f}{waste:>8.0f}{waste - totals['floor'][1]:>11.0f}{kills:>7}{left_on:>13}"
                f"{billed / max(totals['floor'][0], 1):>8.2f}"
            )
    if killed:
        print("FAIL: our policy killed a running task", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
