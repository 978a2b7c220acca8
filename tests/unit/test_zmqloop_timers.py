"""EventLoop's timers (calico.common.timer_queue): kept by deadline, and the order of work in one turn.

Every test drives the loop with a fake clock and ``run_once(max_wait=0)``,
so nothing here depends on how fast the machine is.
"""

import logging
import os

import pytest

from calico.common.timer_queue import TimerQueue
from calico.common.zmqloop import EventLoop


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class RecordingPoller:
    """Stands in for the loop's poller: records each wait, reports nothing readable."""

    def __init__(self) -> None:
        self.waits_ms: list[int] = []

    def register(self, sock, flags) -> None:
        pass

    def unregister(self, sock) -> None:
        pass

    def poll(self, timeout_ms):
        self.waits_ms.append(timeout_ms)
        return []


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def loop(clock):
    return EventLoop(clock=clock)


def timer(log: list, name: str, answers):
    """A timer that logs its name and answers from ``answers`` in turn (the last one repeats)."""
    answers = list(answers)

    def call(now):
        log.append(name)
        return answers.pop(0) if len(answers) > 1 else answers[0]
    return call


def test_due_timers_run_earliest_deadline_first_not_in_registration_order(loop, clock):
    calls = []
    for name, wait in (("late", 3.0), ("early", 1.0), ("middle", 2.0)):
        loop.add_timer(timer(calls, name, [wait]))
    loop.run_once(max_wait=0)
    assert calls == ["late", "early", "middle"]  # all new, all due: registration order breaks the tie
    calls.clear()
    clock.now += 5.0  # all three due again, at different deadlines
    loop.run_once(max_wait=0)
    assert calls == ["early", "middle", "late"]


def test_a_timer_is_not_called_before_its_deadline(loop, clock):
    calls = []
    loop.add_timer(timer(calls, "t", [5.0]))
    loop.run_once(max_wait=0)
    assert calls == ["t"]
    for _ in range(3):
        clock.now += 1.5
        loop.run_once(max_wait=0)
    assert calls == ["t"]  # 4.5 s on: not due
    clock.now += 0.5
    loop.run_once(max_wait=0)
    assert calls == ["t", "t"]


def test_the_wait_is_until_the_earliest_deadline_and_at_most_max_wait(loop, clock):
    poller = loop._poller = RecordingPoller()
    calls = []
    loop.add_timer(timer(calls, "t", [0.25]))
    loop.add_timer(timer(calls, "slow", [30.0]))
    loop.run_once(max_wait=1.0)
    clock.now += 0.25
    loop.run_once(max_wait=1.0)
    loop.run_once(max_wait=0.1)
    assert poller.waits_ms == [250, 250, 100]


def test_work_in_a_turn_runs_due_timers_then_after_callbacks_then_handlers(loop, clock):
    """An after callback added first still runs after the timers; a handler
    that wakes a timer gets it run at the start of the next turn, before
    the after callbacks see the mark."""
    order = []
    dirty = []
    read_fd, write_fd = os.pipe()
    try:
        def apply_pass(now):
            order.append(f"after (dirty={bool(dirty)})")
            dirty.clear()
            return None

        def mark(now):
            order.append("timer")
            return 60.0

        def handler():
            os.read(read_fd, 1)
            order.append("handler")
            dirty.append(True)
            loop.wake(mark)

        loop.add_after(apply_pass)
        loop.add_timer(mark)
        loop.add_socket(read_fd, handler)
        loop.run_once(max_wait=0)
        assert order == ["timer", "after (dirty=False)"]
        order.clear()
        os.write(write_fd, b"x")
        loop.run_once(max_wait=0)
        loop.run_once(max_wait=0)
        assert order == ["after (dirty=False)", "handler", "timer", "after (dirty=True)"]
    finally:
        loop.remove_socket(read_fd)
        os.close(read_fd)
        os.close(write_fd)


def test_a_timer_woken_after_it_ran_runs_again_at_the_next_turn_not_twice_in_one(loop, clock):
    calls = []
    marked = timer(calls, "marked", [60.0])

    def marker(now):
        calls.append("marker")
        loop.wake(marked)
        return 60.0

    loop.add_timer(marked)
    loop.add_timer(marker)
    loop.run_once(max_wait=0)
    # "marked" ran first (registered first) and is woken after: it runs once
    # more, at the start of the next turn, not twice in this one.
    assert calls == ["marked", "marker"]
    loop.run_once(max_wait=0)
    assert calls == ["marked", "marker", "marked"]
    calls.clear()
    clock.now += 60.0  # both due; "marker" now runs first only if it is earlier
    loop.run_once(max_wait=0)
    assert calls.count("marked") == 1 and calls.count("marker") == 1


def test_a_timer_woken_before_its_turn_in_the_phase_runs_in_it(loop, clock):
    calls = []
    late = timer(calls, "late", [60.0])

    def early(now):
        calls.append("early")
        loop.wake(late)
        return 60.0

    loop.add_timer(early)
    loop.add_timer(late)
    loop.run_once(max_wait=0)
    calls.clear()
    clock.now += 30.0
    loop.wake(early)  # as a handler would; "late" is not due for another 30 s
    loop.run_once(max_wait=0)
    assert calls == ["early", "late"]
    loop.run_once(max_wait=0)
    assert calls == ["early", "late"]


def test_wake_at_only_brings_a_deadline_forward(loop, clock):
    calls = []
    t = timer(calls, "t", [10.0])
    loop.add_timer(t)
    loop.run_once(max_wait=0)
    loop.wake(t, at=clock.now + 20.0)  # later than it asked for: ignored
    loop.wake(t, at=clock.now + 4.0)
    clock.now += 4.0
    loop.run_once(max_wait=0)
    assert calls == ["t", "t"]
    clock.now += 9.0
    loop.run_once(max_wait=0)
    assert calls == ["t", "t"]  # its own answer (10 s) counts from its last run


def test_wake_at_never_postpones_a_timer_due_at_the_next_turn(loop, clock):
    calls = []
    t = timer(calls, "t", [None, None])
    loop.add_timer(t)
    loop.run_once(max_wait=0)  # answers None: due again at the next turn
    loop.wake(t, at=clock.now + 5.0)
    clock.now += 1.0
    loop.run_once(max_wait=0)
    assert calls == ["t", "t"]


def test_answers_none_and_zero_run_again_at_the_next_turn_once_per_turn(loop, clock):
    poller = loop._poller = RecordingPoller()
    calls = []
    loop.add_timer(timer(calls, "none", [None]))
    loop.add_timer(timer(calls, "slow", [30.0]))
    loop.run_once(max_wait=1.0)
    loop.run_once(max_wait=1.0)
    # None: runs every turn, but does not shorten the wait (30 s, capped at max_wait).
    assert calls == ["none", "slow", "none"] and poller.waits_ms == [1000, 1000]
    loop.add_timer(timer(calls, "zero", [0.0]))
    calls.clear()
    loop.run_once(max_wait=1.0)
    loop.run_once(max_wait=1.0)
    # 0: due again at once, so the wait is 0; still once per turn.
    assert calls == ["none", "zero", "none", "zero"] and poller.waits_ms[-2:] == [0, 0]


def test_a_timer_that_raises_is_logged_the_others_run_and_it_runs_again_next_turn(loop, clock, caplog):
    calls = []

    def failing(now):
        calls.append("failing")
        raise ValueError("x")

    loop.add_timer(failing)
    loop.add_timer(timer(calls, "fine", [60.0]))
    loop.add_after(timer(calls, "after", [None]))
    with caplog.at_level(logging.ERROR, logger="calico.common.zmqloop"):
        loop.run_once(max_wait=0)
        loop.run_once(max_wait=0)
    assert calls == ["failing", "fine", "after", "failing", "after"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["a timer failed (ValueError: 'x'); carrying on"] * 2


def test_a_removed_timer_is_never_called_again(loop, clock):
    calls = []
    t = timer(calls, "t", [1.0])
    a = timer(calls, "after", [None])
    loop.add_timer(t)
    loop.add_after(a)
    loop.run_once(max_wait=0)
    loop.remove_timer(t)
    loop.remove_timer(a)
    loop.wake(t)
    clock.now += 5.0
    loop.run_once(max_wait=0)
    assert calls == ["t", "after"]


def test_adding_the_same_timer_twice_is_refused(loop):
    t = timer([], "t", [1.0])
    loop.add_timer(t)
    with pytest.raises(ValueError):
        loop.add_after(t)


def test_the_cost_of_a_turn_is_the_timers_due_not_all_timers(loop, clock):
    calls = []
    for i in range(1000):
        loop.add_timer(timer(calls, "idle", [3600.0]))
    loop.add_timer(timer(calls, "busy", [0.1]))
    loop.run_once(max_wait=0)
    assert len(calls) == 1001
    calls.clear()
    for _ in range(100):
        clock.now += 0.1
        loop.run_once(max_wait=0)
    assert calls == ["busy"] * 100


def test_waking_a_timer_many_times_keeps_the_queue_small():
    queue = TimerQueue(now=0.0)
    t = timer([], "t", [3600.0])
    queue.add(t, now=3600.0)
    for i in range(10_000):
        queue.wake(t, at=3000.0 - i * 0.1)  # each earlier than the last: each leaves a stale item
    assert len(queue) < 100
    calls = []
    queue.run_due(3000.0, lambda timer, now: calls.append(now))
    assert calls == [3000.0]  # once, however many items it had


def test_every_turn_stamps_last_iteration(loop, clock):
    loop.run_once(max_wait=0)
    clock.now += 7.0
    loop.run_once(max_wait=0)
    assert loop.last_iteration == clock.now
