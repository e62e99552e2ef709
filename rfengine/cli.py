"""What every command line shares: expected failures (bad input, a checkpoint that does not fit, a
diverged run) end as one line `rfengine: error: ...` with exit status 1, and the process group (if
any) is shut down however the command ends."""
from __future__ import annotations

import sys


def run(body, expected: tuple = (ValueError, FileNotFoundError)) -> int:
    """Call `body()`; 0 when it returns, 1 (with the one-line message) when it raises an `expected` error."""
    from rfengine import parallel
    clean = False
    try:
        body()
        clean = True
    except expected as e:
        print(f"rfengine: error: {e}", file=sys.stderr)
        return 1
    finally:
        parallel.shutdown(clean)
    return 0
