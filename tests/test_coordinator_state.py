"""The coordinator's decisions without sockets or processes: messages in, sends out, made-up times."""

from __future__ import annotations

import signal

import pytest

from dsim import control
from dsim.plan import WorkerPlan
from dsim.supervision import Abort, CoordinatorState, Phase, Send

CONFIG = {"rounds": 3, "net": {"heartbeat": 0.5}, "seed": 1}
PLANS = [WorkerPlan("w0.0", 0, [0, 1]), WorkerPlan("w0.1", 0, [2])]
HB_TIMEOUT = 60.0


def new_state(plans: list[WorkerPlan] = PLANS, machines: int = 1, local: dict[str, int] | None = None,
              ) -> CoordinatorState:
    state = CoordinatorState(plans, machines=machines, run_id="run1", config=CONFIG, graph_hash="g1",
                             local=local or {}, start_timeout=120.0, timeout=30.0,
                             heartbeat_timeout=HB_TIMEOUT)
    state.begin(0.0)
    return state


def ident(name: str) -> bytes:
    return name.encode()


def register(state: CoordinatorState, plan: WorkerPlan, now: float = 1.0, fingerprint: str = "fp") -> list[Send]:
    msg = control.Register(name=plan.name, pid=100, ranks=plan.ranks,
                           endpoints={r: f"tcp://h:{5000 + r}" for r in plan.ranks},
                           data={r: {"data": fingerprint, "part": f"p{r}"} for r in plan.ranks})
    return state.on_message(ident(plan.name), msg, now)


def started(plans: list[WorkerPlan] = PLANS, local: dict[str, int] | None = None) -> CoordinatorState:
    """A state whose workers registered, linked and were sent `start` at t=2."""
    state = new_state(plans, local=local)
    for plan in plans:
        register(state, plan)
    for plan in plans:
        state.on_message(ident(plan.name), control.Ready(name=plan.name), 2.0)
    assert state.phase is Phase.RUNNING
    return state


def sent(sends: list[Send], kind: type) -> dict[bytes, control.Message]:
    return {identity: msg for identity, msg in sends if isinstance(msg, kind)}


def counts(name: str, wave: int, out: int, into: int) -> control.Counts:
    return control.Counts(name=name, wave=wave, bytes_sent=out, bytes_recv=into, msgs_sent=out, msgs_recv=into)


# --- start-up ---------------------------------------------------------------------------------
def test_registration_completes_only_when_every_planned_worker_registered() -> None:
    state = new_state()
    assert sent(register(state, PLANS[0]), control.Peers) == {}
    assert state.phase is Phase.REGISTERING
    peers = sent(register(state, PLANS[1]), control.Peers)
    assert set(peers) == {b"w0.0", b"w0.1"}
    assert peers[b"w0.0"] == control.Peers(run="run1", endpoints={0: "tcp://h:5000", 1: "tcp://h:5001",
                                                                  2: "tcp://h:5002"})
    assert state.phase is Phase.LINKING


def test_registration_also_waits_for_the_other_machines() -> None:
    plans = [WorkerPlan("w0.0", 0, [0]), WorkerPlan("w1.0", 1, [1])]
    state = new_state(plans, machines=2)
    for plan in plans:
        register(state, plan)
    assert state.phase is Phase.REGISTERING
    replies = state.on_message(b"m1", control.Machine(machine=1, config=CONFIG, graph="g1"), 3.0)
    assert replies[0] == (b"m1", control.Accept(run="run1"))
    assert set(sent(replies, control.Peers)) == {b"w0.0", b"w1.0"}


def test_start_barrier_waits_for_every_ready() -> None:
    state = new_state()
    for plan in PLANS:
        register(state, plan)
    assert sent(state.on_message(b"w0.0", control.Ready(name="w0.0"), 2.0), control.Start) == {}
    starts = sent(state.on_message(b"w0.1", control.Ready(name="w0.1"), 2.5), control.Start)
    assert set(starts) == {b"w0.0", b"w0.1"} and state.phase is Phase.RUNNING
    assert state.outcome.timings["startup_s"] == 2.5


def test_registration_timeout_names_the_missing_workers_and_machines() -> None:
    plans = [WorkerPlan("w0.0", 0, [0, 1]), WorkerPlan("w1.0", 1, [2, 3])]
    state = new_state(plans, machines=2)
    register(state, plans[0])
    state.check(119.0, {})
    with pytest.raises(Abort, match=r"timed out after 120 s waiting for registration of nodes 2-3, machine 1"):
        state.check(120.0, {})


def test_a_machine_with_a_different_config_is_refused_listing_the_differing_keys() -> None:
    state = new_state(machines=2)
    theirs = {**CONFIG, "rounds": 4, "net": {"heartbeat": 0.25}}
    with pytest.raises(Abort) as info:
        state.on_message(b"m1", control.Machine(machine=1, config=theirs, graph="other"), 1.0)
    assert info.value.status == "refused"
    assert info.value.reason == ("machine 1 resolved a different config: net.heartbeat=0.25 (here 0.5); "
                                 "rounds=4 (here 3); the graph (topology files or builders differ)")
    sends = state.fail(info.value, 1.0)
    assert sends[0] == (b"m1", control.Refuse(reason=info.value.reason))  # the refusal goes out first
    assert state.outcome.status == "refused" and b"m1" not in state.launchers.values()


def test_an_unexpected_machine_rank_is_refused_without_ending_the_run() -> None:
    state = new_state(machines=2)
    replies = state.on_message(b"m5", control.Machine(machine=5, config=CONFIG, graph="g1"), 1.0)
    assert replies == [(b"m5", control.Refuse(reason="unexpected machine rank 5"))]
    assert state.phase is Phase.REGISTERING


def test_a_data_fingerprint_mismatch_refuses_naming_the_ranks() -> None:
    state = new_state()
    register(state, PLANS[0], fingerprint="aaaa")
    with pytest.raises(Abort, match="node 2 computed data fingerprint bbbb but nodes 0-1 computed aaaa") as info:
        register(state, PLANS[1], fingerprint="bbbb")
    assert info.value.status == "refused" and info.value.ranks == [2]


def test_matching_data_fingerprints_are_recorded() -> None:
    state = new_state()
    for plan in PLANS:
        register(state, plan, fingerprint="aaaa")
    assert state.outcome.data_fingerprint == "aaaa"


# --- supervision ------------------------------------------------------------------------------
def test_a_failed_message_aborts_naming_the_node() -> None:
    state = started()
    with pytest.raises(Abort, match=r"^node 1 failed: ValueError: boom$") as info:
        state.on_message(b"w0.0", control.Failed(name="w0.0", rank=1, reason="ValueError: boom", phase="run"), 3.0)
    assert info.value.ranks == [1] and info.value.status == "failed"


def test_a_silent_worker_aborts_naming_its_ranks_while_a_slow_one_that_beats_does_not() -> None:
    state = started()
    beat = control.Heartbeat(name="w0.0", bytes_sent=0, bytes_recv=0, msgs_sent=0, msgs_recv=0)
    for t in range(10, 63, 10):  # w0.0 computes for a minute but beats; w0.1 says nothing after start at t=2
        state.on_message(b"w0.0/hb", beat, float(t))
    state.check(2.0 + HB_TIMEOUT, {})  # exactly the limit: not yet
    with pytest.raises(Abort, match=r"^node 2 stopped answering \(no heartbeat for 60 s\)$") as info:
        state.check(2.5 + HB_TIMEOUT, {})
    assert info.value.ranks == [2]


def test_heartbeats_keep_every_worker_alive() -> None:
    state = started()
    for t in range(10, 200, 10):
        for name in ("w0.0", "w0.1"):
            state.on_message(ident(name) + b"/hb", control.Heartbeat(name=name, bytes_sent=t, bytes_recv=t,
                                                                     msgs_sent=1, msgs_recv=1), float(t))
        state.check(t + 5.0, {})
    assert state.phase is Phase.RUNNING
    assert "sent 380 B" in state.progress(200.0).headline


def test_a_dead_process_aborts_with_its_exit_signal() -> None:
    state = started(local={"w0.0": 4242, "w0.1": 4243})
    state.check(3.0, {})
    with pytest.raises(Abort, match=r"^node 2 \(pid 4243\) died: killed by SIGKILL$") as info:
        state.check(3.5, {"w0.1": -signal.SIGKILL})
    assert info.value.ranks == [2]


def test_a_process_dead_on_another_machine_aborts_naming_machine_and_pid() -> None:
    state = started()
    exit_msg = control.ProcExit(machine=1, name="w0.1", ranks=[2], pid=77, code=3)
    with pytest.raises(Abort, match=r"^node 2 \(pid 77 on machine 1\) died: exited with code 3$"):
        state.on_message(b"m1", exit_msg, 3.0)


def test_ctrl_c_interrupts() -> None:
    state = started()
    with pytest.raises(Abort, match="interrupted by the user") as info:
        state.check(3.0, {}, interrupted=True)
    assert info.value.status == "interrupted"


# --- termination ------------------------------------------------------------------------------
def all_done(state: CoordinatorState, now: float = 5.0) -> list[Send]:
    sends = []
    for plan in PLANS:
        for rank in plan.ranks:
            sends += state.on_message(ident(plan.name), control.Done(name=plan.name, rank=rank,
                                                                     result={"r": rank}), now)
    return sends


def test_a_result_counts_only_from_the_worker_that_hosts_its_node() -> None:
    state = started()
    state.on_message(ident("w0.1"), control.Done(name="w0.1", rank=0, result={"r": "forged"}), 3.0)  # not its node
    state.on_message(ident("w0.0"), control.Done(name="w0.0", rank=0, result={"r": 0}), 3.0)
    assert state.outcome.results == {0: {"r": 0}} and state.done == {0}


def answer(state: CoordinatorState, wave: int, traffic: dict[str, tuple[int, int]], now: float) -> list[Send]:
    sends = []
    for name, (out, into) in traffic.items():
        sends += state.on_message(ident(name), counts(name, wave, out, into), now)
    return sends


def test_counting_termination_needs_two_identical_balanced_waves() -> None:
    state = started()
    queries = sent(all_done(state), control.Query)
    assert set(queries) == {b"w0.0", b"w0.1"} and queries[b"w0.0"] == control.Query(wave=1)
    assert state.outcome.results == {0: {"r": 0}, 1: {"r": 1}, 2: {"r": 2}}
    # wave 1: bytes in flight (sent 100, received 90)
    assert sent(answer(state, 1, {"w0.0": (60, 40), "w0.1": (40, 50)}, 6.0), control.Query) != {}
    # wave 2: balanced, but different from wave 1
    sends = answer(state, 2, {"w0.0": (60, 50), "w0.1": (40, 50)}, 7.0)
    assert sent(sends, control.Query)[b"w0.0"] == control.Query(wave=3) and state.phase is Phase.DRAINING
    # a late answer to an old wave does not count for the current one
    assert answer(state, 2, {"w0.0": (60, 50)}, 7.5) == []
    # wave 3: the same balanced totals again -> nothing in flight: stop
    stops = sent(answer(state, 3, {"w0.0": (60, 50), "w0.1": (40, 50)}, 8.0), control.Stop)
    assert set(stops) == {b"w0.0", b"w0.1"} and stops[b"w0.0"] == control.Stop(reason="finished")
    assert state.phase is Phase.STOPPING and state.outcome.status == "ok"


def test_two_identical_but_unbalanced_waves_do_not_terminate() -> None:
    state = started()
    all_done(state)
    answer(state, 1, {"w0.0": (60, 40), "w0.1": (40, 50)}, 6.0)
    sends = answer(state, 2, {"w0.0": (60, 40), "w0.1": (40, 50)}, 7.0)
    assert sent(sends, control.Stop) == {} and sent(sends, control.Query) != {}


def test_a_missing_count_times_out() -> None:
    state = started()
    all_done(state, now=5.0)
    answer(state, 1, {"w0.0": (1, 1)}, 6.0)
    with pytest.raises(Abort, match="timed out after 30 s waiting for traffic counts"):
        state.check(35.0, {})


def finish_run(state: CoordinatorState) -> None:
    all_done(state)
    answer(state, 1, {"w0.0": (5, 5), "w0.1": (5, 5)}, 6.0)
    answer(state, 2, {"w0.0": (5, 5), "w0.1": (5, 5)}, 7.0)
    assert state.phase is Phase.STOPPING


def test_a_finished_run_ends_with_every_final_report() -> None:
    state = started()
    finish_run(state)
    state.on_message(b"w0.0", control.Final(name="w0.0", nodes={0: {"bytes_sent": 3}, 1: {"bytes_sent": 2}}),
                     8.0)
    assert not state.finished and state.awaited() == ["w0.1"]
    state.on_message(b"w0.1", control.Final(name="w0.1", nodes={2: {"bytes_sent": 5}}), 8.5)
    assert state.finished
    assert state.outcome.traffic == {0: {"bytes_sent": 3}, 1: {"bytes_sent": 2}, 2: {"bytes_sent": 5}}
    assert state.outcome.timings["wall_s"] == 8.5 and state.outcome.warnings == []


# --- a failed run stops as soon as nothing more can come ---------------------------------------
def failed_run(local: dict[str, int] | None = None) -> CoordinatorState:
    state = started(local=local)
    with pytest.raises(Abort) as info:
        state.on_message(b"w0.0", control.Failed(name="w0.0", rank=0, reason="boom", phase="run"), 3.0)
    stops = sent(state.fail(info.value, 3.0), control.Stop)
    assert set(stops) == {b"w0.0", b"w0.1"} and stops[b"w0.0"].reason == "node 0 failed: boom"
    return state


def test_a_failed_run_finishes_once_every_worker_reported_or_died() -> None:
    state = failed_run(local={"w0.0": 10, "w0.1": 11})
    state.on_message(b"w0.0", control.Final(name="w0.0", nodes={}), 3.1)
    state.check(3.2, {})
    assert not state.finished
    state.check(3.3, {"w0.1": -signal.SIGKILL})  # its report cannot come: no waiting for it
    assert state.finished and state.outcome.timings["wall_s"] == 3.3
    assert state.outcome.failures == [{"ranks": [0], "reason": "node 0 failed: boom"}]
    assert state.outcome.warnings == []


def test_a_worker_that_exited_cleanly_is_awaited_for_its_report_on_the_way() -> None:
    state = failed_run(local={"w0.0": 10, "w0.1": 11})
    state.on_message(b"w0.0", control.Final(name="w0.0", nodes={}), 3.1)
    state.check(3.2, {"w0.1": 0})
    assert not state.finished and state.awaited() == ["w0.1"]
    state.on_message(b"w0.1", control.Final(name="w0.1", nodes={2: {}}), 3.3)
    assert state.finished and 2 in state.outcome.traffic


def test_a_failed_run_does_not_wait_for_a_worker_reported_dead_elsewhere() -> None:
    state = failed_run()
    state.on_message(b"m1", control.ProcExit(machine=1, name="w0.1", ranks=[2], pid=7, code=-9), 3.1)
    state.on_message(b"w0.0", control.Final(name="w0.0", nodes={}), 3.2)
    assert state.finished
    assert state.outcome.warnings == ["node 2 (pid 7 on machine 1) died: killed by SIGKILL"]


def test_a_late_worker_is_told_to_stop_and_awaited() -> None:
    """A worker still loading its data when the run fails: it hears `stop` on its first message."""
    state = new_state(local={"w0.0": 10, "w0.1": 11})
    register(state, PLANS[0])
    with pytest.raises(Abort) as info:
        state.check(120.0, {})
    state.fail(info.value, 120.0)
    state.on_message(b"w0.0", control.Final(name="w0.0", nodes={}), 120.1)
    assert state.awaited() == ["w0.1"]  # alive here, so its registration will come
    replies = register(state, PLANS[1], now=121.0)
    assert replies == [(b"w0.1", control.Stop(reason=info.value.reason))]
    state.on_message(b"w0.1", control.Final(name="w0.1", nodes={}), 121.1)
    assert state.finished


def test_stopping_gives_up_on_missing_reports_with_a_warning() -> None:
    state = failed_run()
    state.on_message(b"w0.0", control.Final(name="w0.0", nodes={}), 3.1)
    state.check(12.9, {})
    assert not state.finished
    state.check(13.0, {})
    assert state.finished
    assert state.outcome.warnings == ["timed out after 10 s waiting for final reports from w0.1"]


def test_a_late_failure_while_stopping_is_a_warning() -> None:
    state = failed_run()
    state.on_message(b"w0.1", control.Failed(name="w0.1", rank=2, reason="peer gone", phase="run"), 3.1)
    assert state.outcome.failures == [{"ranks": [0], "reason": "node 0 failed: boom"}]
    assert state.outcome.warnings == ["node 2 failed: peer gone"]
    assert not state.finished


# --- the messages themselves ------------------------------------------------------------------
def test_messages_travel_as_tagged_maps_and_garbage_is_one_error() -> None:
    import msgpack

    from dsim.wire import WireError

    msg = control.Register(name="w0.0", pid=1, ranks=[0], endpoints={0: "tcp://h:1"},
                           data={0: {"data": "d", "part": "p"}})
    frame = control.encode(msg)
    assert msgpack.unpackb(frame, strict_map_key=False)["t"] == "register"
    assert control.decode(frame) == msg
    for garbage in (b"", b"\xc1\x00junk", msgpack.packb({"t": "nope"}), msgpack.packb({"t": "ready"}),
                    msgpack.packb([1, 2]), msgpack.packb({"t": "ready", "name": 3})):
        with pytest.raises(WireError):
            control.decode(garbage)
