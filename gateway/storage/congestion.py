"""How many writes the write-behind buffer keeps in flight: a congestion window, as TCP keeps
one, adapted to how Firestore answers. No I/O here: the writer reports each commit's outcome.

A fixed amount in flight fails exactly when Firestore slows down: commits that took 30 ms take
seconds, pass the commit deadline, are retried whole, and the retries take the bandwidth the
next commits needed (a congestion collapse: nothing lands, every record goes stale, and the
sweep signs out people who are answering every ping). So the window

* grows by half of what a commit carried while commits answer within ``target_latency``;
* when one answers slower, shrinks to what the link carried in ``target_latency`` at that
  commit's pace (300 writes in 10 s: 30), and at least to 70 %, before commits reach their
  deadline;
* falls to ``minimum`` when one fails (and the writer backs off), as TCP's window does on a
  timeout: the failed commit's bytes may still be crossing the link, and whatever follows
  queues behind them;

between ``minimum`` (a few writes always go) and ``maximum`` (``PONG_BATCH_SIZE`` times
``PONG_FLUSH_CONCURRENCY``, the configured ceiling). A healthy Firestore never leaves the
ceiling; a slow one gets fewer, smaller commits that land, oldest records first.
"""

from __future__ import annotations

#: Commits answering slower than this shrink the window, and while one is in flight longer no
#: other starts (the commit deadline is 10 s; a heartbeat queued behind the link's backlog
#: must still reach Firestore well within the sweep's stale limit).
TARGET_LATENCY = 1.0
MIN_WINDOW = 5
SLOW_FACTOR = 0.7


class CommitWindow:
    """Writes allowed in flight at once."""

    def __init__(
        self,
        maximum: int,
        minimum: int = MIN_WINDOW,
        target_latency: float = TARGET_LATENCY,
        start: int | None = None,
    ) -> None:
        self.maximum = maximum
        self.minimum = min(minimum, maximum)
        self.target_latency = target_latency
        #: Starts at one batch's worth when the ceiling allows (slow start): a Firestore that
        #: cannot take full batches must not get four of them queued on its link at once.
        self.size = max(self.minimum, min(maximum, start or maximum))

    def room(self, in_flight: int) -> int:
        """How many more writes may start now."""
        return max(0, self.size - in_flight)

    def succeeded(self, writes: int, latency: float) -> None:
        if latency > self.target_latency:
            paced = int(writes * self.target_latency / latency)
            self.size = max(self.minimum, min(int(self.size * SLOW_FACTOR), paced))
        else:
            self.size = min(self.maximum, self.size + max(1, writes // 2))

    def failed(self) -> None:
        self.size = self.minimum
