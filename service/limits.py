"""Admission limits shared by the server's endpoints: a count of open calls and a byte budget for the
slices being assembled. Each is thread-safe and knows nothing of the protocol that uses it."""

from __future__ import annotations

import threading
from typing import Callable

MAX_REQUEST_ID_CHARS = 256  # a longer request_id is refused per slice, never logged or echoed whole


class _Counter:
    """A thread-safe count with a limit; on_change(used) is called after every change, outside the lock."""

    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None):
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()
        self._on_change = on_change

    @property
    def used(self) -> int:
        return self._used

    def _add(self, n: int) -> int | None:
        """Adds n and returns None when it fits under the limit; otherwise changes nothing and returns what is left."""
        with self._lock:
            left = self.limit - self._used
            if n > left:
                return left
            self._used += n
            used = self._used
        if self._on_change:
            self._on_change(used)
        return None

    def _sub(self, n: int) -> None:
        with self._lock:
            self._used -= n
            used = self._used
        if self._on_change:
            self._on_change(used)


class Slots(_Counter):
    """At most `limit` holders at once; take() answers at once, it never waits."""

    def take(self) -> bool:
        return self._add(1) is None

    def give(self) -> None:
        self._sub(1)


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


class ByteBudget(_Counter):
    """A total of bytes shared by all streams: reserve() on a slice's header, release when the slice is
    answered, failed or abandoned. A request that does not fit is refused at once, never queued."""

    @property
    def total(self) -> int:
        return self.limit

    def reserve(self, nbytes: int) -> Reservation:
        """A Reservation of nbytes; BudgetExceeded when fewer than nbytes are left."""
        left = self._add(nbytes)
        if left is not None:
            raise BudgetExceeded(f"{nbytes} bytes asked, {left} of {self.limit} left")
        return Reservation(self, nbytes)

    def _give(self, nbytes: int) -> None:
        self._sub(nbytes)
