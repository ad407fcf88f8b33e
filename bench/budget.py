"""The evidence suite's CPU budget: its runners start no run once the CPU-hours spent reach the budget; the suite
then reports what exists. Spent is either what the suite's records hold at each check (`--cpu-suite-out`: every
process's finished runs, so two processes of one suite share one budget) or what was spent before this process
(`--cpu-spent-h`) plus its own runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.records import read_records, suite_records


class NotRun(Exception):
    """A run the protocol needs is not in the records and will not be made now."""


class BudgetSpent(NotRun):
    """The CPU budget is spent."""


@dataclass
class CpuBudget:
    hours: float | None = None  # None: no budget
    spent_h: float = 0.0        # before this process
    mine_s: float = 0.0         # this process's runs
    suite_out: Path | None = None  # set: spent is read from the suite's records at each check instead

    def spent(self) -> float:
        return spent_hours(self.suite_out) if self.suite_out else self.spent_h + self.mine_s / 3600

    def check(self, what: str) -> None:
        """Raise BudgetSpent instead of starting `what` once the budget is reached."""
        if self.hours is not None and (spent := self.spent()) >= self.hours:
            raise BudgetSpent(f"CPU budget of {self.hours:g} h spent ({spent:.2f} h): not starting {what}")

    def charge(self, cpu_s: float) -> None:
        self.mine_s += cpu_s

    @staticmethod
    def add_arguments(ap) -> None:
        """A runner's --cpu-budget-h and --cpu-spent-h (`CpuBudget.of(args)` reads them)."""
        ap.add_argument("--cpu-budget-h", type=float, default=None, help="start no run once --cpu-spent-h plus this "
                        "process's runs reach it (then report what exists)")
        ap.add_argument("--cpu-spent-h", type=float, default=0.0, help="CPU-hours already spent elsewhere (other "
                        "phases and processes of the suite)")
        ap.add_argument("--cpu-suite-out", default=None, help="the suite's --out: spent is what its records hold at "
                        "each check, every process's runs (instead of --cpu-spent-h)")

    @classmethod
    def of(cls, args) -> "CpuBudget":
        return cls(args.cpu_budget_h, args.cpu_spent_h, suite_out=Path(args.cpu_suite_out) if args.cpu_suite_out
                   else None)


def spent_hours(out: Path) -> float:
    """CPU-hours of the runs recorded under `out` (its phases' runs.jsonl and the artefacts' rounds.jsonl, see
    bench/artefacts.py; records without cpu_s count 0)."""
    total = 0.0
    for path in suite_records(out):
        total += sum(r.get("cpu_s", 0.0) for r in read_records(path))
    return total / 3600
