"""A facility's example-level privacy ledger: Opacus's accountant, persisted facility-side across rounds.

The ε a facility reports is for every step it ever trained on its data in this run, not one round's:
each round's DP-SGD steps compose with all the earlier ones. So the accountant's history (Opacus's
`(noise_multiplier, sample_rate, steps)` triples) lives in a JSON file in the facility's own staging
area (`WorkerTask.example_privacy.accountant_file`), which the server writes nowhere and never pulls.

The steps are recorded BEFORE the update is written: once the worker has trained, a later failure
must not let the next attempt spend the same budget again as if it were new (a noised update that
was never published spent nothing in truth, so this errs on the side of a larger ε).

No formula is computed here: Opacus's RDP or PRV accountant gives ε from the history.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from opacus.accountants import IAccountant, create_accountant

from fedhpc.atomic_files import atomic_write_text
from fedhpc.errors import ExampleBudgetSpent

logger = logging.getLogger(__name__)

LEDGER_VERSION = 1


@dataclass
class FacilityLedger:
    """One facility's accountant; `load` it, `check` a task's plan, `record` the steps trained, `epsilon`."""

    path: Path
    accountant: IAccountant
    rounds: list[int]

    @classmethod
    def load(cls, path: Path, mechanism: str) -> FacilityLedger:
        """The ledger at `path`, or a fresh one when the facility has not trained with DP yet."""
        accountant = create_accountant(mechanism)
        if not path.exists():
            return cls(path, accountant, [])
        try:
            state = json.loads(path.read_text())
            if state.get("version") != LEDGER_VERSION or state.get("mechanism") != mechanism:
                raise ValueError(f"version {state.get('version')!r}, mechanism {state.get('mechanism')!r}; "
                                 f"expected {LEDGER_VERSION} and {mechanism!r}")
            accountant.history = [(float(z), float(q), int(n)) for z, q, n in state["history"]]
            rounds = [int(r) for r in state["rounds"]]
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise ExampleBudgetSpent(
                f"the facility's example-level privacy ledger {path} cannot be read ({e}); training on would "
                "restart its epsilon from zero. Restore the file, or remove it only if this run's earlier DP "
                "rounds at this facility are to be forgotten"
            ) from e
        return cls(path, accountant, rounds)

    def epsilon(self, delta: float) -> float:
        """ε at `delta` over every step recorded so far (0 before any)."""
        return float(self.accountant.get_epsilon(delta=delta)) if self.accountant.history else 0.0

    def planned_epsilon(self, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
        """ε once `steps` more steps at (`noise_multiplier`, `sample_rate`) are added; the ledger is unchanged."""
        planned = create_accountant(self.accountant.mechanism())
        planned.history = [*self.accountant.history, (noise_multiplier, sample_rate, steps)]
        return float(planned.get_epsilon(delta=delta))

    def check(
        self, noise_multiplier: float, sample_rate: float, steps: int, delta: float, target: float | None
    ) -> float:
        """Raise `ExampleBudgetSpent` when the planned steps take ε past `target`; returns the planned ε."""
        planned = self.planned_epsilon(noise_multiplier, sample_rate, steps, delta)
        if target is not None and planned > target:
            raise ExampleBudgetSpent(
                f"this task's {steps} DP-SGD steps (noise multiplier {noise_multiplier:g}, sample rate "
                f"{sample_rate:.4g}) would take the facility's example-level epsilon from "
                f"{self.epsilon(delta):.3f} to {planned:.3f}, past example_privacy.target_epsilon {target:g} "
                f"(delta {delta:g}); nothing was trained"
            )
        return planned

    def record(self, round_: int, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Add a task's steps to the history and rewrite the file atomically."""
        self.accountant.history.append((noise_multiplier, sample_rate, steps))
        self.rounds.append(round_)
        state = {
            "version": LEDGER_VERSION,
            "mechanism": self.accountant.mechanism(),
            "history": [list(entry) for entry in self.accountant.history],
            "rounds": self.rounds,
        }
        atomic_write_text(self.path, json.dumps(state, indent=1), make_parents=True)
        logger.info("example-level privacy ledger %s: %d task(s) recorded", self.path, len(self.rounds))
