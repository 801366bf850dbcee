"""The compose scenario needs the container engine and the images: it is collected only when
the run asked for containers (``EMULATORS=containers``, which ``make test-containers`` sets)."""

from __future__ import annotations

import os

collect_ignore_glob = [] if os.environ.get("EMULATORS") == "containers" else ["test_*.py"]
