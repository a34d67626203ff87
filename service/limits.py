"""Admission limits shared by the server's endpoints: a count of open calls and a byte budget for the
slices being assembled. Each is thread-safe and knows nothing of the protocol that uses it."""

from __future__ import annotations

import threading
from typing import Callable

MAX_REQUEST_ID_CHARS = 256  # a longer request_id is refused per slice, never logged or echoed whole


class Slots:
    """At most `limit` holders at once; take() answers at once, it never waits."""

    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None):
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()
        self._on_change = on_change

    @property
    def used(self) -> int:
        return self._used

    def take(self) -> bool:
        with self._lock:
            if self._used >= self.limit:
                return False
            self._used += 1
            used = self._used
        if self._on_change:
            self._on_change(used)
        return True

    def give(self) -> None:
        with self._lock:
            self._used -= 1
            used = self._used
        if self._on_change:
            self._on_change(used)


class Reservation:
    """Bytes taken from a ByteBudget; release() gives them back once, however often it is called."""

    def __init__(self, budget: "ByteBudget", nbytes: int):
        self.budget, self.nbytes = budget, nbytes
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self.budget._give(self.nbytes)

    def __enter__(self) -> "Reservation":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class BudgetExceeded(Exception):
    """A reservation larger than what is left of the budget; the message says how much was asked and left."""


class ByteBudget:
    """A total of bytes shared by all streams: reserve() on a slice's header, release when the slice is
    answered, failed or abandoned. A request that does not fit is refused at once, never queued."""

    def __init__(self, total: int, on_change: Callable[[int], None] | None = None):
        self.total = total
        self._used = 0
        self._lock = threading.Lock()
        self._on_change = on_change

    @property
    def used(self) -> int:
        return self._used

    def reserve(self, nbytes: int) -> Reservation:
        """A Reservation of nbytes; BudgetExceeded when fewer than nbytes are left."""
        with self._lock:
            left = self.total - self._used
            if nbytes > left:
                raise BudgetExceeded(f"{nbytes} bytes asked, {left} of {self.total} left")
            self._used += nbytes
            used = self._used
        if self._on_change:
            self._on_change(used)
        return Reservation(self, nbytes)

    def _give(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes
            used = self._used
        if self._on_change:
            self._on_change(used)
