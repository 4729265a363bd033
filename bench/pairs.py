"""Paired measurement: a figure as its ratio to a baseline measured right beside it.

This machine is shared and its speed drifts by the minute, so a ratio is
never taken against a baseline measured once: the baseline and the
configuration under test alternate (A B A B ...), each pair gives a ratio,
and the median of those ratios is reported with its spread.
"""

import statistics
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass


@dataclass
class PairedRatio:
    ratios: list[float]
    baseline: list[float]
    measured: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    def show(self) -> str:
        """'0.93x (0.90-0.97)': the median ratio and the lowest and highest pair's."""
        return f"{self.median:5.2f}x ({min(self.ratios):.2f}-{max(self.ratios):.2f})"


def alternate(measure: Callable[[], float], under_test: Callable[[], AbstractContextManager],
              pairs: int) -> PairedRatio:
    """measure() with nothing in place, then inside under_test(), `pairs` times over."""
    baseline, measured = [], []
    for _ in range(pairs):
        baseline.append(measure())
        with under_test():
            measured.append(measure())
    return PairedRatio([m / max(b, 1e-9) for b, m in zip(baseline, measured)], baseline, measured)
