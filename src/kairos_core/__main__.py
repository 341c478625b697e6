"""``python -m kairos_core``: placeholder until the CLI lands (issue A2)."""

from __future__ import annotations

import sys


def main() -> int:
    print("kairos: the service entry point is not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
