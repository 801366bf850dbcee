"""``python -m emulator up``: run the local stack (see emulator/stack.py)."""

from __future__ import annotations

import sys

from emulator.stack import up

USAGE = "usage: python -m emulator up"


def main(argv: list[str]) -> int:
    if argv[:1] == ["up"]:
        return up()
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
