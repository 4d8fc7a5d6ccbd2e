"""The asynchronous scheduling policies as pure bookkeeping: arrivals in, decisions out."""

from __future__ import annotations

import json

from fedhpc.run.async_policies import Decision, Dispatch, FedAsyncPolicy, FedBuffPolicy
from fedhpc.run.compass import CompassPolicy


def test_fedasync_applies_every_arrival_and_relaunches_its_facility():
    policy = FedAsyncPolicy(local_steps=5)
    assert policy.start(["a", "b"], 0.0) == [Dispatch("a", 5), Dispatch("b", 5)]
    assert policy.arrived("j1", "b", 3.0) == Decision(aggregate=["j1"], launch=[Dispatch("b", 5)])
    assert policy.lost("a", 4.0, relaunch=True) == Decision(launch=[Dispatch("a", 5)])
    assert policy.lost("a", 5.0, relaunch=False) == Decision()
    assert policy.tick(1e9) == [] and policy.next_wake() is None


def test_fedbuff_relaunches_at_once_and_applies_k_buffered_updates():
    policy = FedBuffPolicy(local_steps=4, buffer_size=3)
    assert policy.arrived("j1", "a", 1.0) == Decision(launch=[Dispatch("a", 4)])
    assert policy.arrived("j2", "a", 2.0) == Decision(launch=[Dispatch("a", 4)])
    saved = json.loads(json.dumps(policy.state()))
    decision = policy.arrived("j3", "b", 3.0)
    assert decision.aggregate == ["j1", "j2", "j3"] and decision.launch == [Dispatch("b", 4)]
    assert policy.state() == {"buffer": []}
    resumed = FedBuffPolicy(local_steps=4, buffer_size=3)
    resumed.restore(saved)
    assert resumed.arrived("j3", "b", 3.0).aggregate == ["j1", "j2", "j3"]


def compass() -> CompassPolicy:
    # momentum 1: the speed is the latest sample, so the numbers below are easy to follow
    return CompassPolicy(min_steps=2, max_steps=10, latest_time_factor=1.2, speed_momentum=1.0)


def test_compass_first_arrivals_are_applied_alone_and_form_groups():
    policy = compass()
    assert policy.start(["fast", "slow"], 0.0) == [Dispatch("fast", 10), Dispatch("slow", 10)]
    first = policy.arrived("f1", "fast", 10.0)  # 1 s/step
    assert first == Decision(aggregate=["f1"], launch=[Dispatch("fast", 10)])
    assert policy.groups[0].expected == 20.0 and policy.groups[0].latest == 22.0
    # the only member arrives on time: its group is aggregated and it gets a new one
    second = policy.arrived("f2", "fast", 20.0)
    assert second.aggregate == ["f2"] and second.group == 0 and second.launch == [Dispatch("fast", 10)]
    assert list(policy.groups) == [1]
    slow = policy.arrived("s1", "slow", 40.0)  # 4 s/step: cannot reach group 1 (expected at 30)
    assert slow == Decision(aggregate=["s1"], launch=[Dispatch("slow", 10)])
    assert policy.groups[2].expected == 80.0 and policy.groups[2].latest == 88.0


def test_compass_slower_facility_joins_a_group_with_fewer_steps_and_they_arrive_together():
    policy = compass()
    policy.start(["fast", "slow"], 0.0)
    policy.arrived("f1", "fast", 10.0)  # 1 s/step; group 0 expected at 20
    joined = policy.arrived("s1", "slow", 12.0)  # 1.2 s/step: 8 s to group 0 is 6 steps
    assert joined == Decision(aggregate=["s1"], launch=[Dispatch("slow", 6)])
    assert policy.membership == {"fast": 0, "slow": 0}
    assert policy.arrived("s2", "slow", 19.2) == Decision()  # waits for the rest of its group
    together = policy.arrived("f2", "fast", 20.0)
    assert together.aggregate == ["s2", "f2"] and together.group == 0
    # fastest first: fast opens group 1 (10 steps, expected at 30); slow fits 8 steps into it
    assert together.launch == [Dispatch("fast", 10), Dispatch("slow", 8)]
    assert policy.membership == {"fast": 1, "slow": 1}


def test_compass_deadline_aggregates_who_arrived_and_a_late_member_joins_the_next_group():
    policy = compass()
    policy.start(["a", "b"], 0.0)
    policy.arrived("a1", "a", 10.0)  # a: 1 s/step, group 0 expected 20 latest 22
    policy.arrived("b1", "b", 10.0)  # b: 1 s/step, joins group 0 with 10 steps
    assert policy.membership == {"a": 0, "b": 0}
    assert policy.arrived("a2", "a", 20.0) == Decision()
    assert policy.next_wake() == 22.0
    assert policy.tick(21.0) == []
    (due,) = policy.tick(22.0)
    assert due.aggregate == ["a2"] and due.launch == [Dispatch("a", 10)]
    late = policy.arrived("b2", "b", 30.0)  # after group 0's latest arrival: buffered for the next group
    assert late.aggregate == [] and policy.general == {"b": "b2"}
    assert late.launch[0].facility == "b"
    done = policy.arrived("a3", "a", 32.0)
    assert done.aggregate[0] == "b2" and "a3" in done.aggregate


def test_compass_steps_stay_within_bounds_and_state_round_trips_through_json():
    policy = CompassPolicy(min_steps=3, max_steps=8, latest_time_factor=1.5, speed_momentum=0.5)
    policy.start(["a", "b", "c"], 0.0)
    times = {"a": 0.0, "b": 0.0, "c": 0.0}
    speeds = {"a": 1.0, "b": 2.5, "c": 7.0}
    steps = {"a": 8, "b": 8, "c": 8}
    key = 0
    for _ in range(40):
        arrivals = {name: times[name] + steps[name] * speeds[name] for name in times}
        facility = min(arrivals, key=arrivals.__getitem__)
        wake = policy.next_wake()
        if wake is not None and wake < arrivals[facility]:
            now, decisions = wake, policy.tick(wake)
        else:
            now, key = arrivals[facility], key + 1
            times[facility] = float("inf")  # waits (for its group) until it is dispatched again
            decisions = [policy.arrived(f"k{key}", facility, now), *policy.tick(now)]
        for decision in decisions:
            for dispatch in decision.launch:
                assert 3 <= dispatch.local_steps <= 8
                times[dispatch.facility], steps[dispatch.facility] = now, dispatch.local_steps
        saved = json.loads(json.dumps(policy.state()))
        copy = CompassPolicy(min_steps=3, max_steps=8, latest_time_factor=1.5, speed_momentum=0.5)
        copy.restore(saved)
        assert copy.state() == policy.state()
    assert set(policy.speed) == {"a", "b", "c"}
    assert abs(policy.speed["a"] - 1.0) < 1e-9


def test_compass_lost_member_completes_its_group_and_is_relaunched():
    policy = compass()
    policy.start(["a", "b"], 0.0)
    policy.arrived("a1", "a", 10.0)
    policy.arrived("b1", "b", 10.0)
    policy.arrived("a2", "a", 20.0)  # group 0 now waits only for b
    decision = policy.lost("b", 21.0, relaunch=True)
    assert decision.aggregate == ["a2"] and decision.group == 0
    assert [d.facility for d in decision.launch] == ["a", "b"]


def test_compass_always_late_facility_is_applied_at_the_next_deadline_with_its_newest_update():
    policy = compass()
    policy.start(["a"], 0.0)
    policy.arrived("a1", "a", 10.0)  # alone; group 0 expected 20, latest 22
    assert policy.tick(22.0) == []  # nobody arrived and nothing late is waiting: the group just closes
    late = policy.arrived("a2", "a", 30.0)  # after its group closed: waits in the general buffer
    assert late.aggregate == [] and policy.general == {"a": "a2"}
    (group,) = [g for g in policy.groups.values() if not g.closed]
    again = policy.arrived("a3", "a", group.latest + 5.0)  # late again: the newer update replaces a2
    assert again.discard == ["a2"] and policy.general == {"a": "a3"}
    (group,) = [g for g in policy.groups.values() if not g.closed]
    (flush,) = policy.tick(group.latest)  # the deadline applies what waits, even with no member in time
    assert flush.aggregate == ["a3"] and policy.general == {}
