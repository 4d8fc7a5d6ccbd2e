"""Asynchronous scheduling policies: when an arrived update is applied, and what each facility does next.

A policy is pure bookkeeping: the asynchronous loop tells it what happened
(an update arrived and was accepted, a job was lost, time passed) and it
answers with a `Decision`: which buffered updates to aggregate into the next
global now, and which facilities to launch (from the newest global) with how
many local steps. Its state is plain JSON, committed with every global, so a
resumed server continues with the same decisions.

- FedAsync (Xie et al., 2019): every accepted update is applied on arrival and
  its facility immediately trains again from the new global.
- FedBuff (Nguyen et al., 2022): accepted updates are buffered; a facility
  trains again at once; the buffer is applied when it holds K updates.
- FedCompass (Li et al., ICLR 2024): see `compass.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Dispatch:
    facility: str
    local_steps: int


@dataclass
class Decision:
    aggregate: list[str] = field(default_factory=list)  # keys of buffered updates to apply now, in this order
    launch: list[Dispatch] = field(default_factory=list)  # facilities to launch from the (new) newest global
    group: int | None = None  # FedCompass: the arrival group being aggregated
    discard: list[str] = field(default_factory=list)  # buffered updates superseded by a newer one of their facility


class AsyncPolicy(Protocol):
    def start(self, facilities: list[str], now: float) -> list[Dispatch]:
        """The first jobs of a new run."""
        ...

    def arrived(self, key: str, facility: str, now: float) -> Decision:
        """An update (buffered under `key`) was accepted from `facility` at `now`."""
        ...

    def lost(self, facility: str, now: float, relaunch: bool) -> Decision:
        """`facility`'s job ended without an accepted update; relaunch it unless told not to."""
        ...

    def tick(self, now: float) -> list[Decision]:
        """Decisions due by time alone (FedCompass group deadlines)."""
        ...

    def next_wake(self) -> float | None:
        """The next time `tick` would decide something, or None."""
        ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


class _RelaunchAtOnce:
    """What FedAsync and FedBuff share: every facility always trains `local_steps`, relaunched at once."""

    def __init__(self, local_steps: int):
        self.local_steps = local_steps

    def start(self, facilities: list[str], now: float) -> list[Dispatch]:
        return [Dispatch(name, self.local_steps) for name in facilities]

    def lost(self, facility: str, now: float, relaunch: bool) -> Decision:
        return Decision(launch=[Dispatch(facility, self.local_steps)] if relaunch else [])

    def tick(self, now: float) -> list[Decision]:
        return []

    def next_wake(self) -> float | None:
        return None


class FedAsyncPolicy(_RelaunchAtOnce):
    def arrived(self, key: str, facility: str, now: float) -> Decision:
        return Decision(aggregate=[key], launch=[Dispatch(facility, self.local_steps)])

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        return None


class FedBuffPolicy(_RelaunchAtOnce):
    def __init__(self, local_steps: int, buffer_size: int):
        super().__init__(local_steps)
        self.buffer_size = buffer_size
        self.buffer: list[str] = []

    def arrived(self, key: str, facility: str, now: float) -> Decision:
        self.buffer.append(key)
        decision = Decision(launch=[Dispatch(facility, self.local_steps)])
        if len(self.buffer) >= self.buffer_size:
            decision.aggregate, self.buffer = self.buffer, []
        return decision

    def state(self) -> dict[str, Any]:
        return {"buffer": list(self.buffer)}

    def restore(self, state: dict[str, Any]) -> None:
        self.buffer = list(state.get("buffer", []))
