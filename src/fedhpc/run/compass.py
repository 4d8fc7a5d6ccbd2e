"""FedCompass (Li et al., ICLR 2024): a computing-power-aware scheduler for semi-asynchronous rounds.

The server estimates each facility's speed (an exponential moving average of
seconds per local step, measured from launch to arrival, so queue waits and
start-up count) and gives each facility the number of local steps, within
[min_steps, max_steps], that makes it arrive together with others: an
*arrival group*. A group is aggregated when all its members have arrived, or
at its latest arrival time (expected time × latest_time_factor) with those
that have; a member arriving after that is late, and its update waits in a
general buffer that joins the next group's aggregation (or the next group
deadline's, if that comes first: with fixed queue and start-up overheads a
facility can be late every time, and its updates must not wait forever).
A facility contributes at most one update to an aggregation: its newest;
an older one still waiting is superseded. Fast facilities thus
run more local steps per aggregation instead of idling, slow ones fewer,
and nobody waits for a queue that may take an hour.

Every facility's first job runs max_steps with no group: its arrival is
applied alone (it is the measurement the groups are built from).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from fedhpc.run.async_policies import Decision, Dispatch


@dataclass
class Group:
    members: list[str]  # assigned, not yet arrived
    expected: float
    latest: float
    arrived: list[str] = field(default_factory=list)
    buffer: dict[str, str] = field(default_factory=dict)  # facility -> update key, for members arrived in time
    closed: bool = False  # aggregated (or its deadline passed): members still out are late


class CompassPolicy:
    def __init__(self, min_steps: int, max_steps: int, latest_time_factor: float, speed_momentum: float):
        self.min_steps = min_steps
        self.max_steps = max_steps
        self.latest_time_factor = latest_time_factor
        self.speed_momentum = speed_momentum
        self.speed: dict[str, float] = {}  # seconds per local step, launch to arrival
        self.dispatched: dict[str, tuple[float, int]] = {}  # facility -> (launched at, local steps)
        self.groups: dict[int, Group] = {}
        self.membership: dict[str, int] = {}
        self.general: dict[str, str] = {}  # facility -> key of its latest late update, applied with the next group
        self.next_group = 0

    def start(self, facilities: list[str], now: float) -> list[Dispatch]:
        return [self._dispatch(name, self.max_steps, now) for name in facilities]

    def arrived(self, key: str, facility: str, now: float) -> Decision:
        self._measure(facility, now)
        group_id = self.membership.pop(facility, None)
        if group_id is None or group_id not in self.groups:
            return Decision(aggregate=[key], launch=[self._assign(facility, now)])
        group = self.groups[group_id]
        group.members.remove(facility)
        if group.closed or now > group.latest:
            superseded = self.general.pop(facility, None)
            self.general[facility] = key
            self._forget_if_empty(group_id)
            return Decision(launch=[self._assign(facility, now)], discard=[superseded] if superseded else [])
        group.arrived.append(facility)
        group.buffer[facility] = key
        if group.members:
            return Decision()
        return self._aggregate_group(group_id, now)

    def lost(self, facility: str, now: float, relaunch: bool) -> Decision:
        group_id = self.membership.pop(facility, None)
        decision = Decision()
        if group_id is not None and group_id in self.groups:
            group = self.groups[group_id]
            group.members.remove(facility)
            if not group.members and group.buffer and not group.closed:
                decision = self._aggregate_group(group_id, now)
            else:
                self._forget_if_empty(group_id)
        self.dispatched.pop(facility, None)
        if relaunch:
            if facility in self.speed:
                decision.launch.append(self._assign(facility, now))
            else:
                decision.launch.append(self._dispatch(facility, self.max_steps, now))
        return decision

    def tick(self, now: float) -> list[Decision]:
        decisions = []
        for group_id in sorted(gid for gid, group in self.groups.items() if not group.closed and group.latest <= now):
            group = self.groups[group_id]
            if group.buffer or self.general:
                decisions.append(self._aggregate_group(group_id, now))
            else:
                group.closed = True
                self._forget_if_empty(group_id)
        return decisions

    def next_wake(self) -> float | None:
        times = [group.latest for group in self.groups.values() if not group.closed]
        return min(times) if times else None

    # --- groups ----------------------------------------------------------------------------------

    def _aggregate_group(self, group_id: int, now: float) -> Decision:
        """Apply the group's buffer with the general one; give its arrived members their next assignment."""
        group = self.groups[group_id]
        superseded = [key for name, key in self.general.items() if name in group.buffer]
        keys = [key for key in [*self.general.values(), *group.buffer.values()] if key not in superseded]
        self.general = {}
        arrived, group.arrived, group.buffer = group.arrived, [], {}
        group.closed = True  # a member still out is late from now on
        self._forget_if_empty(group_id)
        launches = [self._assign(name, now) for name in sorted(arrived, key=lambda name: (self.speed[name], name))]
        return Decision(aggregate=keys, launch=launches, group=group_id, discard=superseded)

    def _assign(self, facility: str, now: float) -> Dispatch:
        """Join the open group that gives the most local steps within bounds, or start a new group."""
        speed = self.speed[facility]
        best_group, best_steps = None, -1
        for group_id, group in sorted(self.groups.items()):
            if group.closed:
                continue
            steps = math.floor((group.expected - now) / speed)
            if self.min_steps <= steps <= self.max_steps and steps >= best_steps:
                best_group, best_steps = group_id, steps
        if best_group is not None:
            self.groups[best_group].members.append(facility)
            self.membership[facility] = best_group
            return self._dispatch(facility, best_steps, now)
        steps = self._steps_for_new_group(facility, now)
        expected = now + steps * speed
        self.groups[self.next_group] = Group(
            members=[facility], expected=expected, latest=now + steps * speed * self.latest_time_factor
        )
        self.membership[facility] = self.next_group
        self.next_group += 1
        return self._dispatch(facility, steps, now)

    def _steps_for_new_group(self, facility: str, now: float) -> int:
        """Steps that make the new group arrive about one max_steps-run of the fastest after an open group.

        So the groups stagger instead of piling up at once; max_steps if no open group constrains it.
        """
        speed, steps = self.speed[facility], -1
        for group in self.groups.values():
            if group.closed or now >= group.latest:
                continue
            fastest = min((self.speed[name] for name in group.members + group.arrived if name in self.speed), default=speed)
            candidate = math.floor((group.latest + fastest * self.max_steps - now) / speed)
            if candidate <= self.max_steps:
                steps = max(steps, candidate)
        if steps < 0:
            return self.max_steps
        return max(steps, self.min_steps)

    def _forget_if_empty(self, group_id: int) -> None:
        group = self.groups[group_id]
        if not group.members and not group.arrived:
            del self.groups[group_id]

    def _dispatch(self, facility: str, steps: int, now: float) -> Dispatch:
        self.dispatched[facility] = (now, steps)
        return Dispatch(facility, steps)

    def _measure(self, facility: str, now: float) -> None:
        launched_at, steps = self.dispatched.pop(facility, (now, 1))
        sample = max(now - launched_at, 1e-6) / steps
        previous = self.speed.get(facility)
        m = self.speed_momentum
        self.speed[facility] = sample if previous is None else (1 - m) * previous + m * sample

    # --- persistence -----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "speed": dict(self.speed),
            "dispatched": {name: list(value) for name, value in self.dispatched.items()},
            "groups": {str(gid): asdict(group) for gid, group in self.groups.items()},
            "membership": dict(self.membership),
            "general": dict(self.general),
            "next_group": self.next_group,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.speed = {name: float(value) for name, value in state["speed"].items()}
        self.dispatched = {name: (float(at), int(steps)) for name, (at, steps) in state["dispatched"].items()}
        self.groups = {int(gid): Group(**group) for gid, group in state["groups"].items()}
        self.membership = {name: int(gid) for name, gid in state["membership"].items()}
        self.general = dict(state["general"])
        self.next_group = int(state["next_group"])
