"""core/fleet.py: the fleet's desired capacity from the backlog (pure; no AWS)."""

from __future__ import annotations

import pytest

from core.fleet import Fleet, FleetAction, Member, confirm_scale_in, decide_fleet, instances_needed
from core.idle import Observation, Policy

NOW = 1_000_000.0
POLICY = Policy(idle_window_s=1800, min_uptime_s=600, queued_max_age_s=86400, heartbeat_stale_s=900)


def fleet(desired: int, *, up: int | None = None, protected: int = 0, launched: float = NOW - 7200, max_size=4):
    count = desired if up is None else up
    members = tuple(
        Member(f"i-{n:017x}", "InService", protected=n < protected, launch_time=launched) for n in range(count)
    )
    return Fleet("gpu-fleet", desired=desired, min_size=0, max_size=max_size, members=members)


def test_one_task_wakes_one_instance() -> None:
    decision = decide_fleet(Observation(now=NOW, visible=1), POLICY, fleet(0), slots=2)
    assert (decision.action, decision.desired) == (FleetAction.SCALE_OUT, 1)


def test_a_burst_wakes_enough_and_never_more_than_max() -> None:
    burst = Observation(now=NOW, visible=10)
    assert decide_fleet(burst, POLICY, fleet(0), slots=2).desired == 4  # 10 tasks / 2 slots = 5, max 4
    assert decide_fleet(Observation(now=NOW, visible=5), POLICY, fleet(0), slots=2).desired == 3
    assert instances_needed(burst, POLICY, slots=1, max_size=20) == 10


def test_running_tasks_count_toward_the_need() -> None:
    # 3 queued + 3 in flight at 2 slots: 3 instances; 2 already asked for -> scale out by one.
    obs = Observation(now=NOW, visible=3, in_flight=3)
    decision = decide_fleet(obs, POLICY, fleet(2), slots=2)
    assert (decision.action, decision.desired) == (FleetAction.SCALE_OUT, 3)


def test_never_lowers_while_work_waits_or_runs() -> None:
    busy = Observation(now=NOW, in_flight=1)
    decision = decide_fleet(busy, POLICY, fleet(4), slots=2)
    assert (decision.action, decision.desired) == (FleetAction.NONE, 4)
    waiting = Observation(now=NOW, visible=1)
    assert decide_fleet(waiting, POLICY, fleet(4), slots=2).action == FleetAction.NONE


def test_backstop_scales_in_only_after_the_window_and_never_below_the_protected() -> None:
    recent = Observation(now=NOW, last_finished_at=NOW - 60)
    assert decide_fleet(recent, POLICY, fleet(3), slots=2).action == FleetAction.NONE
    quiet = Observation(now=NOW, last_finished_at=NOW - 1801)
    decision = decide_fleet(quiet, POLICY, fleet(3), slots=2)
    assert (decision.action, decision.desired) == (FleetAction.SCALE_IN, 0)
    held = decide_fleet(quiet, POLICY, fleet(3, protected=1), slots=2)
    assert (held.action, held.desired) == (FleetAction.SCALE_IN, 1)
    assert decide_fleet(quiet, POLICY, fleet(0), slots=2).action == FleetAction.NONE


def test_backstop_waits_for_min_uptime_and_a_fresh_start() -> None:
    quiet = Observation(now=NOW, last_finished_at=NOW - 7200)
    young = decide_fleet(quiet, POLICY, fleet(2, launched=NOW - 300), slots=1)
    assert young.action == FleetAction.NONE and "min uptime" in young.reason
    # Up 20 min, no task since: the window runs from the start.
    started = decide_fleet(quiet, POLICY, fleet(2, launched=NOW - 1200), slots=1)
    assert started.action == FleetAction.NONE and "window" in started.reason


def test_recheck_keeps_only_an_agreed_scale_in() -> None:
    quiet = Observation(now=NOW, last_finished_at=NOW - 1801)
    first = decide_fleet(quiet, POLICY, fleet(3), slots=2)
    arrived = decide_fleet(Observation(now=NOW, visible=1), POLICY, fleet(3), slots=2)
    assert confirm_scale_in(first, arrived).action == FleetAction.NONE
    held = decide_fleet(quiet, POLICY, fleet(3, protected=2), slots=2)
    assert confirm_scale_in(first, held).desired == 2


def test_slots_must_be_positive() -> None:
    with pytest.raises(ValueError, match="slots"):
        decide_fleet(Observation(now=NOW, visible=1), POLICY, fleet(0), slots=0)
