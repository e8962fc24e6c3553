"""The idle rule over a table of cases. Each of the seed alarm's four known failures is a row (or a few). Then the
stuck-worker rule (functions/shutdown/stuck.py) over a table of its own."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from core.hosts import Liveness
from core.idle import Action, Decision, Observation, Policy, confirm_stop, decide, idle_blocker
from core.instances import Instance, InstanceState
from core.tasks import TaskRecord, TaskStatus
from functions.shutdown.stuck import QUARANTINE_FACTOR, StuckAction, StuckPolicy, decide_stuck, quarantined

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
    # -- failure 3: a burst between samples; the 1-min schedule re-judges from the newest finished_at ----------------
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
    Case("work waiting, only instance up: nothing to do", obs(visible=4), Action.NONE, reason="enough to take it"),
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


# -- one task per instance: 3 instances in mixed states, 1, 2 and 5 tasks ---------------------------------------------
S = InstanceState
MIXED = (state(S.RUNNING, "i-a"), state(S.STOPPED, "i-b"), state(S.STOPPING, "i-c"))
BOOTING = (state(S.PENDING, "i-a"), state(S.STOPPED, "i-b"), state(S.STOPPED, "i-c"))
CASES += [
    Case("1 task, 1 of 3 up: the up one takes it", obs(visible=1, instances=MIXED), Action.NONE, reason="1 up, enough"),
    Case("2 tasks, 1 of 3 up: start the stopped one", obs(visible=2, instances=MIXED), Action.START, ("i-b",)),
    Case(
        "5 tasks, 1 of 3 up: start the stopped one now, the stopping one once stopped",
        obs(visible=5, instances=MIXED),
        Action.START,
        ("i-b",),
        reason="1 more once stopping",
    ),
    Case(
        "1 task queued, 1 in flight, 1 booting: start one more, not two",
        obs(visible=1, in_flight=1, instances=BOOTING),
        Action.START,
        ("i-b",),
        reason="2 task(s) for 3 instance(s): 2 needed, 1 up",
    ),
    Case(
        "2 tasks queued, 1 in flight, 1 booting: start the two others",
        obs(visible=2, in_flight=1, instances=BOOTING),
        Action.START,
        ("i-b", "i-c"),
    ),
    Case(
        "5 tasks, all 3 stopped: start the 3",
        obs(visible=5, instances=tuple(state(InstanceState.STOPPED, i) for i in ("i-a", "i-b", "i-c"))),
        Action.START,
        ("i-a", "i-b", "i-c"),
    ),
    Case(
        "1 task, all 3 stopped: start exactly one",
        obs(visible=1, instances=tuple(state(InstanceState.STOPPED, i) for i in ("i-a", "i-b", "i-c"))),
        Action.START,
        ("i-a",),
    ),
    Case(
        "young QUEUED row not counted yet, fresh heartbeat: 2 tasks, 1 up",
        obs(newest_queued_at=NOW - 5, running_heartbeat_at=NOW - 10, instances=MIXED),
        Action.START,
        ("i-b",),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decision_table(case: Case) -> None:
    decision = decide(case.obs, case.policy)
    assert decision.action == case.action, decision.reason
    assert decision.instance_ids == case.ids
    assert case.reason in decision.reason


def test_mixed_fleet_names_the_stopping_instances_still_needed() -> None:
    assert decide(obs(visible=5, instances=MIXED), POLICY).stopping_ids == ("i-c",)
    assert decide(obs(visible=2, instances=MIXED), POLICY).stopping_ids == ()  # i-b suffices: never one more
    only_stopping = (state(InstanceState.RUNNING, "i-a"), state(InstanceState.STOPPING, "i-c"))
    d = decide(obs(visible=2, instances=only_stopping), POLICY)
    assert d.action == Action.NONE and d.stopping_ids == ("i-c",) and "next scheduled run" in d.reason


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


# -- the stuck-worker rule (functions/shutdown/stuck.py), over its own table -------------------------------------------
STUCK = StuckPolicy(stuck_after_s=10 * MIN)
WAITS = "queue holds 1 visible and 0 delayed message(s)"
UP_1H = running(3600)


def live(seen_ago: float | None = 3600, **marks_ago: float) -> Liveness:
    """GPU's liveness item: seen `seen_ago` s ago (None: never), recovery steps (rebooted_at=..., ...) s ago."""
    ms = {k: int((NOW - v) * 1000) for k, v in marks_ago.items()}
    seen = None if seen_ago is None else int((NOW - seen_ago) * 1000)
    return Liveness(GPU, seen_at=seen, worker="w-gpu", **ms)


def task(worker: str, beat_ago: float, task_id: str = "t-1") -> TaskRecord:
    at = int((NOW - beat_ago) * 1000)
    return TaskRecord(task_id, TaskStatus.RUNNING, "noop", worker=worker, started_at=at - 1000, heartbeat_at=at)


@pytest.mark.parametrize(
    ("inst", "liveness", "tasks", "waiting", "action", "fragment"),
    [
        (UP_1H, None, [], WAITS, StuckAction.NONE, "no liveness"),
        (UP_1H, live(None), [], WAITS, StuckAction.NONE, "no liveness"),
        (running(300), live(), [], WAITS, StuckAction.NONE, "not yet 600s"),
        (UP_1H, live(), [], None, StuckAction.NONE, "no work waits"),
        (UP_1H, live(30), [], WAITS, StuckAction.NONE, "progress 30s ago"),
        (UP_1H, live(), [task("w-gpu", 20)], WAITS, StuckAction.NONE, "progress 20s ago"),  # a loop waiting on slots
        (UP_1H, live(), [task("w-other", 20)], WAITS, StuckAction.REBOOT, "last progress 3600s ago"),
        (UP_1H, live(), [], WAITS, StuckAction.REBOOT, "stuck: up 3600s"),
        (UP_1H, live(rebooted_at=120), [], WAITS, StuckAction.NONE, "rebooted 120s ago"),
        (UP_1H, live(rebooted_at=700), [task("w-gpu", 800)], WAITS, StuckAction.STOP, "after its reboot"),
        (running(1200), live(rebooted_at=3000), [], WAITS, StuckAction.REBOOT, "reboot"),  # started since: anew
        (UP_1H, live(100, rebooted_at=700), [], WAITS, StuckAction.CLEAR, "progress 600s after"),
        (UP_1H, live(rebooted_at=700), [task("w-gpu", 60)], None, StuckAction.CLEAR, "after the last recovery"),
        (UP_1H, live(100, recovered_stop_at=1000), [], WAITS, StuckAction.CLEAR, "after the last recovery"),
    ],
)
def test_the_stuck_rule(
    inst: Instance,
    liveness: Liveness | None,
    tasks: list[TaskRecord],
    waiting: str | None,
    action: StuckAction,
    fragment: str,
) -> None:
    found = {GPU: liveness} if liveness else {}
    (step,) = decide_stuck([inst], found, tasks, waiting=waiting, now=NOW, policy=STUCK)
    assert (step.action, step.instance_id) == (action, GPU) and fragment in step.reason, step


def test_a_stop_requeues_exactly_the_stuck_workers_tasks() -> None:
    mine = [task("w-gpu", 900, "t-1"), task("w-gpu", 950, "t-2")]
    (step,) = decide_stuck(
        [UP_1H], {GPU: live(rebooted_at=700)}, [*mine, task("w-other", 5, "t-3")], waiting=WAITS, now=NOW, policy=STUCK
    )
    assert step.action == StuckAction.STOP and step.requeue == ("t-1", "t-2")
    assert step.to_log()["requeue"] == ["t-1", "t-2"] and step.progress_at == pytest.approx(NOW - 900)


def test_only_running_instances_are_judged_and_an_incomplete_read_acts_on_none() -> None:
    others = [state(s, f"i-{s.value}") for s in (InstanceState.STOPPED, InstanceState.PENDING, InstanceState.STOPPING)]
    everyone = {i.instance_id: live() for i in others}
    assert decide_stuck(others, everyone, [], waiting=WAITS, now=NOW, policy=STUCK) == []
    (step,) = decide_stuck([UP_1H], {GPU: live()}, [], waiting=WAITS, now=NOW, policy=STUCK, running_complete=False)
    assert step.action == StuckAction.NONE and "not every RUNNING task was read" in step.reason


def test_a_stopped_stuck_instance_is_quarantined_for_three_stuck_windows() -> None:
    assert STUCK.quarantine_s == QUARANTINE_FACTOR * STUCK.stuck_after_s == 30 * MIN
    held = quarantined({GPU: live(recovered_stop_at=29 * MIN)}, now=NOW, policy=STUCK)
    assert held == {GPU: pytest.approx(NOW + MIN)}
    assert quarantined({GPU: live(recovered_stop_at=31 * MIN)}, now=NOW, policy=STUCK) == {}
    assert quarantined({GPU: live(rebooted_at=60)}, now=NOW, policy=STUCK) == {}
