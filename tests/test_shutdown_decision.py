"""The idle rule over a table of cases. Each of the seed alarm's four known failures is a row (or a few)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from core.idle import Action, Decision, Observation, Policy, confirm_stop, decide, idle_blocker
from core.instances import Instance, InstanceState

NOW = 1_700_000_000.0
MIN = 60.0
POLICY = Policy(idle_window_s=30 * MIN, min_uptime_s=10 * MIN, queued_max_age_s=86400, heartbeat_stale_s=15 * MIN)
GPU = "i-0gpu"


def running(ago_s: float, iid: str = GPU) -> Instance:
    return Instance(iid, InstanceState.RUNNING, NOW - ago_s)


def state(s: InstanceState, iid: str = GPU, launched_ago: float = 3 * 3600) -> Instance:
    return Instance(iid, s, NOW - launched_ago)


@dataclass(frozen=True)
class Case:
    name: str
    obs: Observation
    action: Action
    ids: tuple[str, ...] = ()
    reason: str = ""  # a fragment the reason must contain
    policy: Policy = field(default=POLICY)


def obs(**kw: object) -> Observation:
    kw.setdefault("instances", (running(3 * 3600),))
    return Observation(now=NOW, **kw)  # type: ignore[arg-type]


CASES = [
    # -- failure 1: a task longer than the window, its message in flight, visible == 0 -------------------------------
    Case(
        "f1 long task in flight, heartbeat fresh",
        obs(in_flight=1, running_heartbeat_at=NOW - 20, last_finished_at=NOW - 5 * 3600),
        Action.NONE,
        reason="flight",
    ),
    Case(
        "f1 in-flight count lags to 0, heartbeat still fresh",
        obs(running_heartbeat_at=NOW - 60, last_finished_at=NOW - 5 * 3600),
        Action.NONE,
        reason="heartbeat",
    ),
    Case("f1 RUNNING row not written yet, message in flight", obs(in_flight=1), Action.NONE, reason="flight"),
    # -- failure 2: metrics late or gone; we read the queue directly, so silence in CloudWatch changes nothing -------
    Case(
        "f2 queue idle 6h+, no metrics: direct reads say idle",
        obs(last_finished_at=NOW - 7 * 3600),
        Action.STOP,
        (GPU,),
    ),
    Case(
        "f2 queue just woke, metrics still lagging: direct read sees the message",
        obs(visible=1),
        Action.NONE,
        reason="visible",
    ),
    # -- failure 3: a burst between samples; the 5-min schedule re-judges from the newest finished_at ----------------
    Case(
        "f3 burst ended 5 min ago: window restarts", obs(last_finished_at=NOW - 5 * MIN), Action.NONE, reason="< window"
    ),
    Case("f3 burst ended 31 min ago: stop now", obs(last_finished_at=NOW - 31 * MIN), Action.STOP, (GPU,)),
    # -- failure 4: work arrives while the instance is stopping / after it stopped ------------------------------------
    Case(
        "f4 work while stopping: cannot start yet, says so",
        obs(visible=1, instances=(state(InstanceState.STOPPING),)),
        Action.NONE,
        reason="stopping",
    ),
    Case("f4 work and stopped: start", obs(visible=1, instances=(state(InstanceState.STOPPED),)), Action.START, (GPU,)),
    Case(
        "f4 delayed message and stopped: start",
        obs(delayed=1, instances=(state(InstanceState.STOPPED),)),
        Action.START,
        (GPU,),
    ),
    Case(
        "f4 QUEUED row, message not counted yet, stopped: start",
        obs(newest_queued_at=NOW - 5, instances=(state(InstanceState.STOPPED),)),
        Action.START,
        (GPU,),
    ),
    # -- the other guards -------------------------------------------------------------------------------------------
    Case(
        "young QUEUED row blocks a stop",
        obs(newest_queued_at=NOW - 30, last_finished_at=NOW - 3600),
        Action.NONE,
        reason="QUEUED",
    ),
    Case(
        "orphan QUEUED row (no message, older than window) does not hold the GPU",
        obs(newest_queued_at=NOW - 3600, last_finished_at=NOW - 3600),
        Action.STOP,
        (GPU,),
    ),
    Case(
        "QUEUED row past QUEUED_TASK_MAX_AGE when that is the lower bound",
        obs(newest_queued_at=NOW - 120, last_finished_at=NOW - 3600),
        Action.STOP,
        (GPU,),
        policy=Policy(idle_window_s=30 * MIN, min_uptime_s=0, queued_max_age_s=60),
    ),
    Case(
        "orphan QUEUED row does not start a stopped GPU",
        obs(newest_queued_at=NOW - 3600, instances=(state(InstanceState.STOPPED),)),
        Action.NONE,
        reason="already stopped",
    ),
    Case(
        "dead worker's RUNNING row (stale heartbeat, no message) does not hold the GPU",
        obs(running_heartbeat_at=NOW - 2 * 3600, last_finished_at=NOW - 3 * 3600),
        Action.STOP,
        (GPU,),
    ),
    Case(
        "dead worker's last heartbeat counts as activity for the window",
        obs(running_heartbeat_at=NOW - 20 * MIN, last_finished_at=NOW - 3 * 3600),
        Action.NONE,
        reason="< window",
    ),
    Case(
        "stale RUNNING but more rows unread: assume live",
        obs(running_heartbeat_at=NOW - 2 * 3600, running_scan_complete=False),
        Action.NONE,
        reason="beyond",
    ),
    Case(
        "min uptime: freshly started, never used",
        obs(instances=(running(5 * MIN),)),
        Action.NONE,
        reason="min uptime",
        policy=Policy(idle_window_s=60, min_uptime_s=10 * MIN),
    ),
    Case(
        "window counts from LaunchTime after a start",
        obs(instances=(running(20 * MIN),), last_finished_at=NOW - 3 * 3600),
        Action.NONE,
        reason="< window",
    ),
    Case("idle since launch for the window", obs(instances=(running(31 * MIN),)), Action.STOP, (GPU,)),
    Case(
        "already stopped and idle: nothing to do",
        obs(instances=(state(InstanceState.STOPPED),)),
        Action.NONE,
        reason="already stopped",
    ),
    Case("stopping and idle: nothing to do", obs(instances=(state(InstanceState.STOPPING),)), Action.NONE),
    Case(
        "pending and idle: leave it booting",
        obs(instances=(state(InstanceState.PENDING),)),
        Action.NONE,
        reason="pending",
    ),
    Case(
        "missing instance: no error",
        obs(visible=3, instances=(state(InstanceState.UNKNOWN),)),
        Action.NONE,
        reason="missing",
    ),
    Case("work waiting, instance up: nothing to do", obs(visible=4), Action.NONE, reason="up to take it"),
    # -- several instances ------------------------------------------------------------------------------------------
    Case(
        "one waiting message starts one of two stopped",
        obs(visible=1, instances=(state(InstanceState.STOPPED, "i-a"), state(InstanceState.STOPPED, "i-b"))),
        Action.START,
        ("i-a",),
    ),
    Case(
        "many waiting start all stopped",
        obs(visible=9, instances=(state(InstanceState.STOPPED, "i-a"), state(InstanceState.STOPPED, "i-b"))),
        Action.START,
        ("i-a", "i-b"),
    ),
    Case(
        "idle fleet: stop the ones past min uptime",
        obs(
            last_finished_at=NOW - 3600,
            instances=(running(3 * 3600, "i-a"), running(2 * MIN, "i-b"), state(InstanceState.STOPPED, "i-c")),
        ),
        Action.STOP,
        ("i-a",),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decision_table(case: Case) -> None:
    decision = decide(case.obs, case.policy)
    assert decision.action == case.action, decision.reason
    assert decision.instance_ids == case.ids
    assert case.reason in decision.reason


def test_stopping_decision_names_what_to_start_later() -> None:
    d = decide(
        obs(visible=1, instances=(state(InstanceState.STOPPING, "i-a"), state(InstanceState.STOPPED, "i-b"))), POLICY
    )
    assert d.action == Action.START and d.instance_ids == ("i-b",)  # a stopped one can take it now
    d = decide(obs(visible=1, instances=(state(InstanceState.STOPPING, "i-a"),)), POLICY)
    assert d.stopping_ids == ("i-a",) and "next scheduled run" in d.reason


def test_recheck_vetoes_a_stop_when_work_arrived() -> None:
    first = decide(obs(last_finished_at=NOW - 3600), POLICY)
    assert first.action == Action.STOP
    second = decide(obs(visible=1, last_finished_at=NOW - 3600), POLICY)
    final = confirm_stop(first, second)
    assert final.action == Action.NONE and "re-check" in final.reason


def test_recheck_only_stops_what_both_looks_agree_on() -> None:
    first = Decision(Action.STOP, "x", ("i-a", "i-b"))
    assert confirm_stop(first, Decision(Action.STOP, "y", ("i-b",))).instance_ids == ("i-b",)
    assert confirm_stop(first, Decision(Action.STOP, "y", ("i-c",))).action == Action.NONE
    start = Decision(Action.START, "z", ("i-a",))
    assert confirm_stop(start, Decision(Action.NONE, "w")) is start


def test_idle_blocker_is_the_shared_safety_check() -> None:
    assert idle_blocker(Observation(now=NOW), POLICY) is None
    assert idle_blocker(Observation(now=NOW, in_flight=1), POLICY) is not None
    assert idle_blocker(Observation(now=NOW, newest_queued_at=NOW - 1), POLICY) is not None


def test_log_form_is_plain_json_values() -> None:
    log = decide(obs(visible=1, instances=(state(InstanceState.STOPPED),)), POLICY).to_log()
    assert log["action"] == "START" and log["instance_ids"] == (GPU,)
