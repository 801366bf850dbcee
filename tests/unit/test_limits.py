"""The abuse limits' arithmetic."""

from __future__ import annotations

from gateway.limits import ConnectLimiter, take_token


def test_bucket_allows_a_burst_then_the_rate() -> None:
    """Burst 4 at rate 2/s: four frames at once, then one every half second."""
    tokens, last = float("inf"), 0.0
    allowed = []
    for _ in range(5):
        ok, tokens = take_token(tokens, last, 10.0, rate=2, burst=4)
        last = 10.0
        allowed.append(ok)
    assert allowed == [True, True, True, True, False]
    ok, tokens = take_token(tokens, last, 10.5, rate=2, burst=4)
    assert ok
    ok, tokens = take_token(tokens, 10.5, 10.6, rate=2, burst=4)
    assert not ok


def test_connect_limiter_counts_per_address_per_minute() -> None:
    """The limit applies per address and resets with the minute."""
    limiter = ConnectLimiter(per_minute=2)
    assert [limiter.allow("a", 60.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("b", 61.0)
    assert limiter.allow("a", 120.0)


def test_zero_disables_the_connect_limit() -> None:
    limiter = ConnectLimiter(per_minute=0)
    assert all(limiter.allow("a", 1.0) for _ in range(1000))
