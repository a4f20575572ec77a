"""The `lightning-prune` command: checks the command line's extras before importing it, so
a base install (the callback only) gets one line naming them, not a traceback."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from lightning_prune.extras import MissingExtraError, require

    try:
        require("the command line (lightning-prune)")
    except MissingExtraError as err:
        print(f"lightning-prune: error: {err}", file=sys.stderr)
        return 2
    from lightning_prune.cli import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
