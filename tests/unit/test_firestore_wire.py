"""The commit encoder's bytes against the library's own protobufs: whatever writes the
write-behind buffer hands it, the request parses to exactly the ``CommitRequest`` the library's
types build (map entries may come in another order, which protobuf leaves free). That the emulator
stores what the public WriteBatch stores is proven in tests/integration/test_firestore_store.py.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "presence-hypothesis")
)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from gateway.storage.firestore_store import _raw_types, merge_write  # noqa: E402
from gateway.storage.firestore_wire import CommitEncoder, is_flat, varint  # noqa: E402
from gateway.storage.store import DELETE_FIELD, Write, pong_write  # noqa: E402

DATABASE = "projects/demo-wire/databases/(default)"


def library_request(writes: list[Write]) -> Any:
    """The request as the library's protobuf types build it (the path the encoder replaced)."""
    raw = _raw_types()
    return raw.CommitRequest(database=DATABASE, writes=[merge_write(DATABASE, w) for w in writes])


def encoded(writes: list[Write]) -> bytes:
    return CommitEncoder(DATABASE).request(
        writes, lambda w: merge_write(DATABASE, w).SerializeToString()
    )


def same_request(writes: list[Write]) -> None:
    ours, theirs = encoded(writes), library_request(writes)
    assert _raw_types().CommitRequest.FromString(ours) == theirs
    assert len(ours) == len(theirs.SerializeToString())


def test_a_batch_of_pong_writes_is_the_librarys_request() -> None:
    same_request([pong_write(f"user-{i}", datetime.now(UTC)) for i in range(500)])


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1970, 1, 1, tzinfo=UTC),  # seconds and nanos both zero: an empty Timestamp
        datetime(1970, 1, 1, 0, 0, 0, 1, UTC),  # nanos only
        datetime(1969, 12, 31, 23, 59, 59, 500_000, UTC),  # negative seconds
        datetime(1, 1, 1, tzinfo=UTC),  # Firestore's earliest
        datetime(9999, 12, 31, 23, 59, 59, 999_999, UTC),  # and latest
        datetime(2026, 12, 3, 12, 0, tzinfo=timezone(timedelta(hours=-8))),  # not UTC
    ],
)
def test_timestamps_at_the_edges_encode_as_the_library_does(moment: datetime) -> None:
    same_request([Write("members", "u1", {"last_pong_at": moment, "note": "é ✓"})])


def test_writes_it_does_not_encode_are_taken_from_the_fallback_in_order() -> None:
    """Nested maps, deletions, numbers and empty sets go through the library's types; mixed
    with pongs in one batch, every write keeps its place."""
    now = datetime.now(UTC)
    writes = [
        pong_write("a", now),
        Write("members", "b", {"counts": {"x": 1, "gone": DELETE_FIELD}, "flag": True}),
        Write("sessions", "c", {}),
        pong_write("d", now),
        Write("members", "e", {"ratio": 0.5, "none": None}),
    ]
    same_request(writes)
    assert [is_flat(w.fields) for w in writes] == [True, False, False, True, False]


def test_a_naive_timestamp_is_refused_as_the_library_path_refuses_it() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        encoded([Write("members", "u", {"last_pong_at": datetime(2026, 1, 1)})])  # noqa: DTZ001


@pytest.mark.parametrize(
    ("number", "wire"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (1_796_314_448, b"\xd0\xaa\xc6\xd8\x06"),
        (-1, b"\xff" * 9 + b"\x01"),  # an int64's two's complement, ten bytes
    ],
)
def test_varints_are_protobufs(number: int, wire: bytes) -> None:
    assert varint(number) == wire


@pytest.mark.parametrize("bits", [7, 14, 21, 28, 35, 63])
def test_varints_either_side_of_each_byte_boundary_match_the_protobuf_runtime(bits: int) -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    for number in (2**bits - 1, 2**bits, -(2**bits)):
        if -(2**63) <= number < 2**63:
            # A Timestamp holding only seconds is that field's tag, then the varint.
            assert varint(number) == Timestamp(seconds=number).SerializeToString()[1:]


keys = st.text(min_size=1, max_size=40)
moments = st.datetimes(
    min_value=datetime(1, 1, 2),  # noqa: DTZ001 (hypothesis wants naive bounds)
    max_value=datetime(9999, 12, 30),  # noqa: DTZ001
    timezones=st.just(UTC),
)
flat_fields = st.dictionaries(keys, st.one_of(moments, st.text(max_size=300)), max_size=6)
doc_ids = st.text(
    alphabet=st.characters(blacklist_characters="/", blacklist_categories=["Cs"]),
    min_size=1,
    max_size=200,
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.tuples(doc_ids, flat_fields), max_size=8))
def test_any_flat_batch_parses_to_the_librarys_request(
    batch: list[tuple[str, dict[str, Any]]],
) -> None:
    """Any keys (backquoted paths, non-ASCII, long), any strings, any timestamps Firestore
    accepts, any document ids, shared datetimes or not."""
    same_request([Write("members", doc_id, fields) for doc_id, fields in batch])
