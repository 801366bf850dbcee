"""``python -m gateway``: the gateway with settings from the environment (see README);
``gateway.serving`` holds the server and the entry point for applications that embed it."""

from __future__ import annotations

import sys

from gateway.serving import main

if __name__ == "__main__":
    sys.exit(main())
