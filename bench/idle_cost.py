"""Replay a day of bursty task arrivals through the seed's idle shutdown and ours; print idle GPU-minutes, killed
tasks and cost against the floor (stopping the moment the last task ends). The model is in bench/idle_sim.py.

`ours` runs the project's real decision code (functions.shutdown.decision via the Lambda's schedule, and
adapter.autostop on the node); `ours-lambda-only` switches the on-node autostop off to show the backstop alone;
`ours-<N>min` is ours with a lower idle window; `ours-5min` / `floor-5min` compare ours with the floor at a 5-minute
window (the floor stopping exactly 5 minutes after its last task ends).

Then a fleet day (bench/fleet_sim.py): bigger bursts on `--instances` instances of `--slots` GPUs each, for a naive
start-everything version of the seed, ours (fleet mode: core.fleet.decide_fleet + Auto Scaling's warm pool +
adapter.autostop on each instance) and the floor at the same idle window.

Exits 1, saying why, if any of ours kills a running task, if ours-5min bills more than 1.10x floor-5min, or if ours
bills more than 1.15x the floor on the fleet day (on the sweep's sums too, with --sweep).

Usage: python bench/idle_cost.py [--seed 7] [--start-min 3] [--metric-delay-min 3] [--sweep 8] [--slots 2] ...
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a script from anywhere

from bench import fleet_sim  # noqa: E402
from bench.idle_sim import DAY, Gpu, Params, Task, simulate, workload  # noqa: E402
from core.idle import Policy  # noqa: E402

SINGLE_MAX, FLEET_MAX = 1.10, 1.15  # ours-5min / floor-5min, and ours / floor on the fleet day (billed hours)


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
    ap.add_argument("--sweep", type=int, default=0, help="also replay seeds 1..N (both days) and sum them")
    ap.add_argument("--no-autostop", action="store_true", help="switch every `ours` adapter's autostop off")
    fleet = ap.add_argument_group("the fleet day (bench/fleet_sim.py)")
    fp = fleet_sim.FleetParams
    fleet.add_argument("--instances", type=int, default=fp.instances, help="the group's MaxSize")
    fleet.add_argument("--slots", type=int, default=fp.slots, help="GPUs per instance: tasks one instance runs at once")
    fleet.add_argument(
        "--warm-start-s",
        type=int,
        default=fp.start_s,
        help="desired capacity raised until the adapter polls (billed): ~30 s for a warm-pool start of a stopped "
        "instance (AWS at the warm pools launch, InfoQ 2021-05) + ~15 s adapter start (estimate; bench/fleet_sim.py)",
    )
    fleet.add_argument(
        "--leave-s", type=int, default=fp.leave_s, help="the termination hook of an idle leaver (billed)"
    )
    fleet.add_argument("--burst-min", type=int, default=fleet_sim.BURST_MIN, help="tasks in a burst, at least")
    fleet.add_argument("--burst-max", type=int, default=fleet_sim.BURST_MAX, help="tasks in a burst, at most")
    fleet.add_argument("--burst-gap-s", type=float, default=fleet_sim.BURST_GAP_S, help="mean gap in a burst")
    fleet.add_argument(
        "--node-check",
        choices=fleet_sim.NODE_CHECKS,
        default=fp.node_check,
        help="ours: what the adapter's autostop checks before leaving: shared = adapter.autostop.shared_checks "
        "(core.idle.idle_blocker over the whole queue and table); waiting = core.idle.waiting_reason only",
    )
    fleet.add_argument("--receive", choices=("random", "first"), default=fp.receive, help="which poller gets a task")
    fleet.add_argument(
        "--leave",
        choices=("group", "self"),
        default=fp.leave,
        help="ours: an idle adapter lowers the desired capacity and the group picks whom to scale in (group, as "
        "adapter/fleet.py), or the adapter's own instance goes (self)",
    )
    return ap.parse_args(argv)


def policy_of(args: argparse.Namespace) -> Policy:
    return Policy(idle_window_s=args.window_min * 60, min_uptime_s=args.min_uptime_min * 60)


def run_day(args: argparse.Namespace, seed: int, names: tuple[str, ...]) -> tuple[list[Task], dict[str, Gpu]]:
    policy = policy_of(args)
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
    if args.no_autostop:
        prm = replace(prm, poll_s=horizon + 1)
    tasks = workload(seed)
    five = replace(prm, policy=replace(policy, idle_window_s=300))
    variants = {
        "floor": ("floor", prm),
        "seed": ("seed", prm),
        "ours": ("ours", prm),
        "ours-lambda-only": ("ours", replace(prm, poll_s=horizon + 1)),  # the adapter never checks for idleness
        f"ours-{args.lower_window_min:g}min": (
            "ours",
            replace(prm, policy=replace(policy, idle_window_s=args.lower_window_min * 60)),
        ),
        "ours-5min": ("ours", five),
        "floor-5min": ("floor", replace(five, floor_window_s=300)),
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


def fleet_params(args: argparse.Namespace) -> fleet_sim.FleetParams:
    return fleet_sim.FleetParams(
        policy_of(args),
        instances=args.instances,
        slots=args.slots,
        start_s=args.warm_start_s,
        stop_s=int(args.stop_min * 60),
        leave_s=args.leave_s,
        node_check=args.node_check,
        receive=args.receive,
        autostop=not args.no_autostop,
        leave=args.leave,
    )


def run_fleet(args: argparse.Namespace, seed: int) -> tuple[list[Task], dict[str, fleet_sim.Day]]:
    """The fleet day: naive, ours, ours with the other node check (to show what the check costs), the floor."""
    prm = fleet_params(args)
    other = next(c for c in fleet_sim.NODE_CHECKS if c != prm.node_check)
    tasks = fleet_sim.fleet_workload(seed, burst_min=args.burst_min, burst_max=args.burst_max, gap_s=args.burst_gap_s)
    variants = {
        "naive": ("naive", prm),
        "ours": ("ours", prm),
        f"ours-{other}-check": ("ours", replace(prm, node_check=other)),
        "floor": ("floor", prm),
    }
    horizon = DAY + int(args.tail_hours * 3600)
    return tasks, {name: fleet_sim.simulate(kind, tasks, p, horizon, seed) for name, (kind, p) in variants.items()}


def single_day(args: argparse.Namespace) -> list[str]:
    """The single-instance table; returns why it fails (empty: it holds)."""
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
    five = results["ours-5min"].billed_s / max(results["floor-5min"].billed_s, 1)
    print(
        f"seed / ours: waste {waste_min(seed) / max(waste_min(ours), 1):.2f}, cost "
        f"{seed.billed_s / max(ours.billed_s, 1):.2f}; the seed killed {seed.kills} run(s), "
        f"{seed.wasted_s / 60:.0f} GPU-min of work thrown away. ours-5min / floor-5min: {five:.3f} billed "
        f"(max {SINGLE_MAX}).\nminutes throughout. idle: billed with no task "
        "executing (boot included); waste: idle + killed runs; over floor: waste above the floor's; max wait: "
        "arrival to first receive; left: never finished; floor: stop the moment the last task ends; floor-5min: "
        "stop exactly 5 minutes after it ends."
    )
    why = [
        f"{name} killed {g.kills} running task(s)" for name, g in results.items() if name.startswith("ours") and g.kills
    ]
    if five > SINGLE_MAX:
        why.append(f"ours-5min billed {five:.3f}x floor-5min (max {SINGLE_MAX}x)")
    return why


def single_sweep(args: argparse.Namespace) -> list[str]:
    names = ("floor", "seed", "ours", f"ours-{args.lower_window_min:g}min", "ours-5min", "floor-5min")
    totals = {name: [0.0, 0.0, 0, 0] for name in names}
    for seed_n in range(1, args.sweep + 1):
        for name, g in run_day(args, seed_n, names)[1].items():
            totals[name][0] += g.billed_s / 60
            totals[name][1] += waste_min(g)
            totals[name][2] += g.kills
            totals[name][3] += g.state != "stopped"
    print(
        f"\nseeds 1..{args.sweep}, summed:\n{'policy':<17}{'billed':>8}{'waste':>8}{'over floor':>11}"
        f"{'killed':>7}{'days left on':>13}{'x floor':>8}"
    )
    for name, (billed, waste, kills, left_on) in totals.items():
        print(
            f"{name:<17}{billed:>8.0f}{waste:>8.0f}{waste - totals['floor'][1]:>11.0f}{kills:>7}{left_on:>13}"
            f"{billed / max(totals['floor'][0], 1):>8.2f}"
        )
    five = totals["ours-5min"][0] / max(totals["floor-5min"][0], 1)
    print(f"ours-5min / floor-5min, summed: {five:.3f} billed (max {SINGLE_MAX})")
    why = [
        f"{name} killed {t[2]} running task(s) on seeds 1..{args.sweep}"
        for name, t in totals.items()
        if name.startswith("ours") and t[2]
    ]
    if five > SINGLE_MAX:
        why.append(f"ours-5min billed {five:.3f}x floor-5min on seeds 1..{args.sweep} (max {SINGLE_MAX}x)")
    return why


FLEET_HEAD = (
    f"{'policy':<20}{'inst-h':>8}{'x floor':>8}{'p95 wait':>9}{'max wait':>9}{'starts':>7}{'empty':>6}{'killed':>7}"
    f"{'done':>6}{'left':>5}{'leaves':>7}{'backstop':>9}{'held':>6}"
)


def fleet_day(args: argparse.Namespace) -> list[str]:
    """The fleet table; returns why it fails (empty: it holds)."""
    tasks, results = run_fleet(args, args.seed)
    peak = max(len([t for t in tasks if t.arrival <= x.arrival < t.arrival + t.duration]) for x in tasks)
    print(
        f"\nfleet day, seed {args.seed}: {len(tasks)} tasks in bursts of {args.burst_min}-{args.burst_max} "
        f"({args.burst_gap_s:g} s apart), {sum(t.duration for t in tasks) / 3600:.1f} GPU-h of work, up to {peak} "
        f"submitted tasks overlapping; {args.instances} instances x {args.slots} GPUs, warm start "
        f"{args.warm_start_s} s, window {args.window_min} min, min uptime {args.min_uptime_min} min, node check "
        f"{args.node_check}{', autostop off' if args.no_autostop else ''}"
    )
    floor = results["floor"]
    print(FLEET_HEAD + "\n" + "-" * len(FLEET_HEAD))
    for name, d in results.items():
        print(
            f"{name:<20}{d.billed_s / 3600:>8.2f}{d.billed_s / max(floor.billed_s, 1):>8.3f}"
            f"{fleet_sim.p95(d.waits) / 60:>9.1f}{max(d.waits, default=0) / 60:>9.1f}{d.starts:>7}{d.empty:>6}"
            f"{d.kills:>7}{d.done:>6}{len(tasks) - d.done - d.lost:>5}{d.leaves:>7}{d.scale_ins:>9}"
            f"{d.held_s / 3600:>6.1f}"
        )
    print(
        "inst-h: billed instance-hours (the issue's GPU-hours; starting, running and the termination hook); waits "
        "in minutes, submit to first receive; empty: starts that ran no task; leaves: an idle adapter left through "
        "the group; backstop: the controller lowered the desired capacity (SCALE_IN); held: inst-h billed with the "
        "instance idle for longer than the window; naive: start every instance on a submit, stop them "
        "all after the window (core.idle.decide); floor: start only when no slot is free anywhere, pack, stop each "
        "instance exactly one window after its last task."
    )
    return fleet_verdict(results, f"seed {args.seed}")


def fleet_verdict(results: dict[str, fleet_sim.Day], where: str) -> list[str]:
    ours, floor = results["ours"], results["floor"]
    why = [
        f"{name} killed {d.kills} task(s) ({where})"
        for name, d in results.items()
        if name.startswith("ours") and d.kills
    ]
    ratio = ours.billed_s / max(floor.billed_s, 1)
    if ratio > FLEET_MAX:
        why.append(
            f"fleet ours billed {ours.billed_s / 3600:.2f} inst-h, {ratio:.3f}x the floor's "
            f"{floor.billed_s / 3600:.2f} (max {FLEET_MAX}x; {where})"
        )
    return why


def fleet_sweep(args: argparse.Namespace) -> list[str]:
    sums: dict[str, fleet_sim.Day] = {}
    worst: dict[str, float] = {}
    for seed_n in range(1, args.sweep + 1):
        results = run_fleet(args, seed_n)[1]
        for name, d in results.items():
            total = sums.setdefault(name, fleet_sim.Day([]))
            total.nodes.extend(d.nodes)
            total.kills += d.kills
            total.waits += d.waits
            worst[name] = max(worst.get(name, 0.0), d.billed_s / max(results["floor"].billed_s, 1))
    print(
        f"\nfleet day, seeds 1..{args.sweep}, summed:\n{'policy':<20}{'inst-h':>8}{'x floor':>8}{'worst day':>10}"
        f"{'p95 wait':>9}{'starts':>7}{'killed':>7}{'held':>7}"
    )
    for name, d in sums.items():
        print(
            f"{name:<20}{d.billed_s / 3600:>8.1f}{d.billed_s / max(sums['floor'].billed_s, 1):>8.3f}"
            f"{worst[name]:>10.3f}{fleet_sim.p95(d.waits) / 60:>9.1f}{d.starts:>7}{d.kills:>7}{d.held_s / 3600:>7.1f}"
        )
    print("x floor: summed hours over the floor's; worst day: the highest one-seed ratio; p95 over all seeds' waits")
    return fleet_verdict(sums, f"seeds 1..{args.sweep} summed")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    why = single_day(args) + fleet_day(args)
    if args.sweep:
        why += single_sweep(args) + fleet_sweep(args)
    for reason in why:
        print(f"FAIL: {reason}", file=sys.stderr)
    return 1 if why else 0


if __name__ == "__main__":
    raise SystemExit(main())
