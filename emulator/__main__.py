"""``python -m emulator up``: run the local stack (see emulator/stack.py), ``--containers``: the
same stack in containers (emulator/compose.py);
``python -m emulator token USER_ID``: an ID token for that user (see emulator/token.py)."""

from __future__ import annotations

import sys

from emulator import token
from emulator.stack import up

USAGE = "usage: python -m emulator up [--containers] | python -m emulator token USER_ID"


def main(argv: list[str]) -> int:
    if argv == ["up"]:
        return up()
    if argv == ["up", "--containers"]:
        return up(in_containers=True)
    if argv[:1] == ["token"]:
        return token.main(argv[1:])
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
