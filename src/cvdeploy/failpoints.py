"""Named moments where the fault tests kill the process (``kill -9``), as gofail's failpoints.

``failpoint("registry.state.written")`` does nothing unless the environment variable
``CVDEPLOY_FAILPOINT`` names that moment (read at the call, never at import): then the
process sends itself ``SIGKILL`` there, and a test checks what a crash at that exact
moment leaves behind (``tests/reliability/test_faults.py``). The moments:

================================  ===========================================================
``registry.state.written``        the registry's new state is in place (promote, rollback)
``registry.promote.applied``      ``cvdeploy registry promote|rollback`` changed the registry,
                                  its audit outcome not yet written
``fsutil.write_atomic.written``   a temporary file is written, not yet renamed into place
``bundle.staged``                 a bundle change is staged, not yet swapped in
``audit.append.partial``          half of an audit line is written (a torn write)
================================  ===========================================================
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV", "armed", "failpoint"]

ENV = "CVDEPLOY_FAILPOINT"


def failpoint(name: str) -> None:
    """Kill this process with ``SIGKILL`` when ``$CVDEPLOY_FAILPOINT`` is ``name``."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def armed(name: str) -> bool:
    """Whether ``$CVDEPLOY_FAILPOINT`` is ``name`` (for a failpoint that acts first)."""
    return os.environ.get(ENV) == name
