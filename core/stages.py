"""Wall time and peak resident memory of each pipeline stage."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil

SAMPLE_SECONDS = 0.05


@dataclass
class StageRecord:
    stage: str
    seconds: float
    peak_mb: float


@dataclass
class StageTimer:
    """Records each stage's seconds and the peak RSS of this process during it.

    The peak is sampled every 50 ms by a background thread, so a spike shorter than
    that can be missed.
    """

    records: list[StageRecord] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        process = psutil.Process()
        peak = [process.memory_info().rss]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(SAMPLE_SECONDS):
                peak[0] = max(peak[0], process.memory_info().rss)

        thread = threading.Thread(target=sample, daemon=True)
        began = time.perf_counter()
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            peak[0] = max(peak[0], process.memory_info().rss)
            self.records.append(
                StageRecord(name, time.perf_counter() - began, peak[0] / 2**20)
            )

    def table(self) -> str:
        """Return the records as an aligned text table."""
        lines = [f"{'stage':<14} {'seconds':>9} {'peak MB':>9}"]
        for record in self.records:
            lines.append(f"{record.stage:<14} {record.seconds:>9.2f} {record.peak_mb:>9.0f}")
        total = sum(r.seconds for r in self.records)
        peak = max((r.peak_mb for r in self.records), default=0.0)
        lines.append(f"{'total':<14} {total:>9.2f} {peak:>9.0f}")
        return "\n".join(lines)
