import random

from ftsip.timers import TimerWheel


def test_fires_in_order_and_not_early_by_more_than_a_tick():
    w = TimerWheel(100.0, 0.01, 64)
    fired = []
    deadlines = [100.0 + random.Random(1).random() * 3 for _ in range(1)]
    rnd = random.Random(7)
    deadlines = [100.0 + rnd.random() * 3 for _ in range(500)]   # beyond one revolution (0.64 s)
    for d in deadlines:
        w.schedule(d, lambda arg, now: fired.append((arg, now)), d)
    now = 100.0
    while now < 103.1:
        now += 0.013
        w.advance(now)
        for d, t in fired:
            assert t >= d - 0.01
    assert sorted(d for d, _ in fired) == sorted(deadlines)
    assert len(w) == 0


def test_cancel_is_lazy_and_counted():
    w = TimerWheel(0.0, 0.01, 16)
    hits = []
    h1 = w.schedule(0.5, lambda a, n: hits.append(a), 1)
    w.schedule(0.5, lambda a, n: hits.append(a), 2)
    w.cancel(h1)
    assert len(w) == 2
    w.advance(1.0)
    assert hits == [2]
    assert len(w) == 0


def test_past_deadline_fires_within_a_tick_and_after_long_idle():
    w = TimerWheel(10.0, 0.01, 16)
    w.advance(50.0)
    hits = []
    w.schedule(5.0, lambda a, n: hits.append(n), None)
    w.schedule(50.05, lambda a, n: hits.append(n), None)
    w.advance(50.001)          # same tick as the last walk: the past-due entry waits for the next tick
    w.advance(50.011)
    assert hits == [50.011]
    w.advance(500.0)
    assert hits == [50.011, 500.0]


def test_callback_may_schedule_more():
    w = TimerWheel(0.0, 0.01, 8)
    hits = []

    def again(n, now):
        hits.append(n)
        if n < 5:
            w.schedule(now + 0.02, again, n + 1)
    w.schedule(0.0, again, 0)
    t = 0.0
    for _ in range(100):
        t += 0.01
        w.advance(t)
    assert hits == [0, 1, 2, 3, 4, 5]
