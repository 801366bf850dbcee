"""The abuse limits' arithmetic."""

from __future__ import annotations

from gateway.protocol.limits import ConnectLimiter, connect_address, take_token


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


def test_with_every_peer_trusted_the_rightmost_forwarded_entry_is_the_address() -> None:
    """With ``*`` the entry the front end appended counts, whatever the client wrote before
    it; several headers read as one list; without the header the peer counts."""
    peer = ("198.51.100.7", 5000)  # what uvicorn made of the leftmost entry
    xff = b"x-forwarded-for"
    assert connect_address(peer, [(xff, b"198.51.100.7, 203.0.113.9")], True) == "203.0.113.9"
    assert connect_address(peer, [(xff, b"203.0.113.9")], True) == "203.0.113.9"
    several = [(xff, b"1.1.1.1"), (b"host", b"x"), (xff, b"2.2.2.2 ,  203.0.113.5 ")]
    assert connect_address(peer, several, True) == "203.0.113.5"
    assert connect_address(("10.0.0.1", 1), [(b"host", b"x")], True) == "10.0.0.1"
    assert connect_address(None, [], True) == "unknown"


def test_with_a_list_of_trusted_peers_uvicorns_choice_stands() -> None:
    """With a list uvicorn has already walked the header from the right to the first entry
    that is not a trusted proxy, and that (in ``client``) is the address."""
    headers = [(b"x-forwarded-for", b"198.51.100.7, 203.0.113.9")]
    assert connect_address(("203.0.113.9", 0), headers, False) == "203.0.113.9"
    assert connect_address(None, headers, False) == "unknown"
