"""Documents written together (``put_together``) are committed together: taken whole or not at
all, held back while any of them is in a commit in flight, and still linked after a failure."""

from __future__ import annotations

import math

from gateway.storage.schema import MEMBERS, SESSIONS
from gateway.storage.store import Write, connect_writes, disconnect_writes, pong_write
from gateway.storage.write_buffer import MAX_GROUP, Chunk, Key, PendingWrites
from tests.unit.test_writer import at

MEMBER, SESSION = (MEMBERS, "u1"), (SESSIONS, "s1")


def keys(chunk: Chunk) -> list[Key]:
    return [key for key, _ in chunk]


def test_a_group_is_taken_whole_even_past_the_limit_when_it_comes_first() -> None:
    """A member and its session go into one chunk; a chunk with room for one of them leaves
    both for the next."""
    pending = PendingWrites()
    pending.put(Write(SESSIONS, "other", {"x": 1}), False, True, 100)
    pending.put_together(connect_writes("u1", "s1", "i1", at(0)), 100)
    assert keys(pending.take(math.inf, 2, 0.0)) == [(SESSIONS, "other")]
    assert sorted(keys(pending.take(math.inf, 1, 0.0))) == sorted([MEMBER, SESSION])


def test_a_group_waits_while_one_of_its_documents_is_in_flight() -> None:
    """With the member in a commit in flight (a pong), the disconnect's session record is not
    taken on its own, and nothing counts as due until that commit ends."""
    pending = PendingWrites()
    pending.put(pong_write("u1", at(0)), True, False, 100)
    in_flight = pending.take(math.inf, 10, 0.0)
    assert keys(in_flight) == [MEMBER]
    pending.put_together(disconnect_writes("u1", "s1", 1000, at(1)), 100)
    assert pending.take(math.inf, 10, 0.0) == []
    assert pending.oldest_since() is None
    pending.release(in_flight)
    assert sorted(keys(pending.take(math.inf, 10, 0.0))) == sorted([MEMBER, SESSION])


def test_a_failed_groups_documents_stay_linked() -> None:
    """A group whose commit failed goes back linked, merged with what was written meanwhile."""
    pending = PendingWrites()
    pending.put_together(connect_writes("u1", "s1", "i1", at(0)), 100)
    failed = pending.take(math.inf, 10, 0.0)
    pending.put(pong_write("u1", at(1)), True, False, 100)
    pending.release(failed)
    pending.requeue(failed)
    pending.put(pong_write("u2", at(2)), True, False, 100)
    first = pending.take(math.inf, 10, 0.0)
    assert sorted(keys(first)) == sorted([MEMBER, SESSION, (MEMBERS, "u2")])
    pending.release(first)
    pending.put(Write(SESSIONS, "s1", {"y": 1}), False, True, 100)
    assert keys(pending.take(math.inf, 10, 0.0)) == [SESSION]


def test_a_member_links_every_socket_record_written_meanwhile_up_to_a_bound() -> None:
    """Socket records of one user written while its member waits join one group, up to
    MAX_GROUP documents; beyond that a record is committed on its own."""
    pending = PendingWrites()
    for n in range(MAX_GROUP + 5):
        pending.put_together(connect_writes("u1", f"s{n}", "i1", at(n)), 10_000)
    chunk = pending.take(math.inf, 10, 0.0)
    assert len(chunk) == MAX_GROUP
    assert MEMBER in keys(chunk)
    assert len(pending) == 6  # the session records past the bound
