"""The peak resident memory of a process and its children, sampled from /proc.

Apart from the modules that need it (``gpuale compare``, bench/ tasks) so that measuring
memory imports nothing of the analyses it measures.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids += [int(k) for k in task.read_text().split()]
        except OSError:
            pass
    return kids


class PeakMemory(threading.Thread):
    """Peak resident set of this process and its children, sampled every 20 ms.

    ``ru_maxrss`` is not used: on Linux it keeps the high-water mark of the parent that
    forked the process. Without /proc (not Linux) the peak stays 0 and is reported as
    unknown.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kib = 0
        self.stop = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while True:
            total = _rss_kib(me) + sum(_rss_kib(k) for k in _children(me))
            self.peak_kib = max(self.peak_kib, total)
            if self.stop.wait(0.02):
                return
