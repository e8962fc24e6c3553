"""bench/idle_cost.py in-process: the rows it prints, and an exit code that enforces its rules (ours kills nothing;
ours-5min bills within 1.10x floor-5min on one instance; ours bills within 1.15x the floor on the fleet day).
Every ratio here is of simulated billed hours, deterministic for a seed; nothing is timed."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import pytest

from bench import fleet_sim, idle_cost
from bench.idle_sim import DAY, Params, simulate, workload
from core.idle import Policy

SINGLE_ROWS = ("floor", "seed", "ours", "ours-lambda-only", "ours-10min", "ours-5min", "floor-5min")
FLEET_ROWS = ("naive", "ours", "ours-shared-check", "floor")


@dataclass
class Run:
    rc: int
    out: str
    err: str

    def table(self, header_start: str) -> tuple[str, list[str]]:
        """The header line that starts with `header_start` and the table rows under it (up to a blank line)."""
        lines = self.out.splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith(header_start))
        rows = []
        for line in lines[at + 2 :]:
            tokens = line.split()
            if len(tokens) < 2 or not tokens[1].replace(".", "").isdigit():  # the notes under the table
                break
            rows.append(line)
        return lines[at], rows

    def cell(self, header_start: str, row: str, column: str) -> str:
        """A right-aligned column's value: the last token before where the column's name ends in the header."""
        header, rows = self.table(header_start)
        line = next(r for r in rows if r.split()[0] == row)
        end = header.index(column) + len(column)
        return line[:end].split()[-1]


def run(*argv: str) -> Run:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = idle_cost.main(list(argv))
    return Run(rc, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def default() -> Run:
    return run()


def test_default_run_prints_every_row_and_holds(default: Run) -> None:
    assert default.rc == 0, default.err
    single = [r.split()[0] for r in default.table("policy            billed")[1]]
    fleet = [r.split()[0] for r in default.table("policy                inst-h")[1]]
    assert single == list(SINGLE_ROWS)
    assert fleet == list(FLEET_ROWS)


def test_ours_kills_nothing_and_stays_near_the_floor(default: Run) -> None:
    for row in SINGLE_ROWS:
        if row.startswith("ours"):
            assert default.cell("policy            billed", row, "killed") == "0"
    for row in ("ours", "ours-shared-check"):
        assert default.cell("policy                inst-h", row, "killed") == "0"
    ours = float(default.cell("policy                inst-h", "ours", "x floor"))
    assert ours <= idle_cost.FLEET_MAX
    five = float(default.cell("policy            billed", "ours-5min", "billed"))
    floor_five = float(default.cell("policy            billed", "floor-5min", "billed"))
    assert five / floor_five <= idle_cost.SINGLE_MAX
    naive = float(default.cell("policy                inst-h", "naive", "x floor"))
    assert naive > ours  # start-everything pays for the instances it woke for nothing


def test_a_bad_policy_fails_both_rules() -> None:
    # No on-node autostop and a 30-minute minimum uptime: the controller alone stops GPUs, late.
    bad = run("--no-autostop", "--min-uptime-min", "30")
    assert bad.rc == 1
    assert "ours-5min billed" in bad.err and "x floor-5min (max 1.1x)" in bad.err
    assert "fleet ours billed" in bad.err and "(max 1.15x; seed 7)" in bad.err


def test_the_node_check_decides_whether_idle_instances_leave() -> None:
    # At a 5-minute window the whole-queue check (core.idle.idle_blocker) keeps idle instances up while any other
    # instance runs a task; asking only whether work waits (ours: adapter/autostop.py in fleet mode) lets each leave
    # one window after its own last task.
    args = idle_cost.parse(["--window-min", "5"])
    results = idle_cost.run_fleet(args, 7)[1]
    floor = results["floor"].billed_s
    assert results["ours"].billed_s / floor <= idle_cost.FLEET_MAX
    assert results["ours-shared-check"].billed_s / floor > idle_cost.FLEET_MAX
    assert results["ours-shared-check"].held_s > 10 * results["ours"].held_s
    assert results["ours"].kills == results["ours-shared-check"].kills == 0


def test_the_sweep_sums_both_days() -> None:
    swept = run("--sweep", "1", "--node-check", "waiting")
    assert swept.rc == 0, swept.err
    assert "\nseeds 1..1, summed:" in swept.out and "\nfleet day, seeds 1..1, summed:" in swept.out
    assert "ours-5min / floor-5min, summed:" in swept.out


def test_the_fleet_floor_on_one_instance_is_the_single_floor() -> None:
    # One oracle rule, two models: on one instance of one slot the fleet's floor bills what idle_sim's does.
    policy = Policy(idle_window_s=300, min_uptime_s=600)
    horizon = DAY + 6 * 3600
    for seed in (1, 7):
        tasks = workload(seed)
        single = simulate(
            "floor", tasks, Params(180, 60, 6 * 3600, 180, 900, policy, races=0, floor_window_s=300), horizon
        )
        fleet = fleet_sim.simulate(
            "floor", tasks, fleet_sim.FleetParams(policy, instances=1, slots=1, start_s=180, stop_s=60), horizon, seed
        )
        assert (fleet.billed_s, fleet.starts, sorted(fleet.waits)) == (
            single.billed_s,
            single.starts,
            sorted(single.waits),
        )


def test_the_fleet_day_is_deterministic_for_a_seed() -> None:
    args = idle_cost.parse([])
    tasks = fleet_sim.fleet_workload(3)
    assert tasks == fleet_sim.fleet_workload(3) != fleet_sim.fleet_workload(4)
    assert max(len([t for t in tasks if t.arrival <= x.arrival < t.arrival + t.duration]) for x in tasks) > 8
    days = [fleet_sim.simulate("ours", tasks, idle_cost.fleet_params(args), DAY, 3) for _ in range(2)]
    assert [(d.billed_s, d.waits, d.starts) for d in days[:1]] == [(d.billed_s, d.waits, d.starts) for d in days[1:]]
    with pytest.raises(ValueError, match="unknown variant"):
        fleet_sim.simulate("everything", [], fleet_sim.FleetParams(Policy()), 10)
