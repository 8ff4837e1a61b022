"""KUBELING_CNI_TRACE=1: where an exec'd plugin's time goes, one stderr line per phase.

    kubeling-cni trace: +   412 us  t=  3871 us  minflt=  1502  imports: cni.api

`+` is the time since the previous mark, `t` since this module was imported
(the top of cni.main, i.e. after the interpreter's own start-up), `minflt` the
process's minor page faults so far (on a Firecracker VM each costs ~7 us, and
they are most of an import's cost).  Off, mark() is one global lookup; this
module imports nothing that is not already loaded at start-up.
"""

from __future__ import annotations

import os
import sys
import time

ENABLED = os.environ.get("KUBELING_CNI_TRACE", "") not in ("", "0")
if ENABLED:
    import resource
_t0 = _last = time.perf_counter_ns()


def mark(phase: str) -> None:
    """Print how long it took since the previous mark to reach `phase` (only when enabled)."""
    global _last
    if not ENABLED:
        return
    now = time.perf_counter_ns()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    sys.stderr.write(f"kubeling-cni trace: +{(now - _last) // 1000:6d} us  t={(now - _t0) // 1000:6d} us  "
                     f"minflt={faults:6d}  {phase}\n")
    _last = now
