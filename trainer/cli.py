"""The name a command goes by in its usage and error lines.

`sonotext-NAME` when it runs as an installed console command (setup.cfg's entry points), `python -m MODULE` when it
runs as a module: a user reads back the very command they typed.
"""

from __future__ import annotations

import sys
from pathlib import Path

CONSOLE_PREFIX = "sonotext-"


def program_name(module: str) -> str:
    """`sonotext-...` if this process is a console command, else `python -m {module}`."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name.startswith(CONSOLE_PREFIX) else f"python -m {module}"
