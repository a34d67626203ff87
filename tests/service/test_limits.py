"""The admission pieces any endpoint shares: open-call slots, the byte budget, log-safe client text."""

from __future__ import annotations

import pytest

from dnirecon.errors import ConfigError
from service.config import CONTROL_THREADS, Settings
from service.limits import BudgetExceeded, ByteBudget, Slots
from service.logsafe import escape


def test_slots_refuse_the_one_beyond_the_limit_and_take_it_again_once_given_back():
    seen = []
    slots = Slots(2, on_change=seen.append)
    assert slots.take() and slots.take() and not slots.take()
    slots.give()
    assert slots.take() and slots.used == 2
    assert seen == [1, 2, 1, 2]


def test_budget_refuses_a_reservation_larger_than_what_is_left_and_says_how_much():
    budget = ByteBudget(100)
    first = budget.reserve(60)
    with pytest.raises(BudgetExceeded, match="50 bytes asked, 40 of 100 left"):
        budget.reserve(50)
    assert budget.reserve(40).nbytes == 40 and budget.used == 100
    first.release()
    assert budget.used == 40


def test_a_reservation_released_twice_gives_its_bytes_back_once():
    seen = []
    budget = ByteBudget(100, on_change=seen.append)
    r = budget.reserve(30)
    r.release()
    r.release()
    assert budget.used == 0 and seen == [30, 0]


def test_escape_shows_control_characters_and_never_writes_them():
    text = escape("scan\n7\r\t\x1b[31m\x00\x7f\x85\u2028ok")
    assert text == "scan\\n7\\r\\t\\x1b[31m\\x00\\x7f\\x85\\u2028ok"
    assert all(c.isprintable() for c in text)


def test_escape_bounds_the_text_and_says_how_much_was_left_off():
    assert escape("a" * 1_000_000, limit=10) == "a" * 10 + "...(+999990 chars)"


def test_escape_twice_is_escape_once():
    assert escape(escape("a\nb\\c")) == escape("a\nb\\c") == "a\\nb\\c"


def test_max_workers_must_leave_threads_for_control_calls_beyond_max_streams():
    Settings(max_streams=8, max_workers=8 + CONTROL_THREADS)
    with pytest.raises(ConfigError, match=r"DNIRECON_MAX_WORKERS / --max-workers is 15, expected at least "
                                          r"DNIRECON_MAX_STREAMS / --max-streams \(8\) \+ 8"):
        Settings(max_streams=8, max_workers=15)
