"""Admission: at most ``limit`` score requests in flight, counting work rather than handlers.

A request's slot is held by its handler, by its running decode and by its video while it sits
in the batch queue; it is freed when the last of them lets go. So a request that timed out
while its video was still being decoded or queued keeps its slot until that work is gone, and
timeouts cannot pile up unbounded work behind the limit.
"""

from __future__ import annotations

import threading


class Admission:
    """At most ``limit`` score requests in flight; a slot is freed when all its work is gone."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0
        self._lock = threading.Lock()  # slots are released from decode and model threads too

    def try_admit(self) -> Slot | None:
        with self._lock:
            if self.count >= self.limit:
                return None
            self.count += 1
        return Slot(self)

    def _free(self) -> None:
        with self._lock:
            self.count -= 1


class Slot:
    """One admitted request's claim: held by its handler, its running decode and its queued video."""

    def __init__(self, admission: Admission):
        self._admission = admission
        self._holders = 1  # the handler
        self._lock = threading.Lock()

    def hold(self) -> None:
        with self._lock:
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if last:
            self._admission._free()
