"""The scheduled sweep: sign out users whose last pong is older than ``PONG_TIMEOUT``.

Self-contained (deployed alone from ``functions/``); it shares no code with ``gateway/``. The
fields and the callback body both sides rely on are pinned by ``tests/contract``.
"""

from presence_sweep.core import SweepReport, sweep
from presence_sweep.decision import SessionRef

__all__ = ["SessionRef", "SweepReport", "sweep"]
