"""docs/capacity.md holds the tables scripts/capacity.py prints, and a few of its figures agree
with a computation by hand from the documented defaults and prices."""

from __future__ import annotations

import math

import pytest

from gateway.storage import schema as gateway_schema
from presence_sweep import schema as sweep_schema
from scripts import capacity

DOC = capacity.DOC.read_text()


def block(page: str) -> str:
    """The text between the page's capacity markers."""
    return page.split(capacity.BEGIN, 1)[1].split(capacity.END, 1)[0].strip()


def test_the_page_holds_the_scripts_tables() -> None:
    """The page's tables are the script's output for the standard sizes, character for character."""
    assert block(DOC) == capacity.render(capacity.STANDARD_SIZES).strip(), (
        "docs/capacity.md is stale: run python -m scripts.capacity --write"
    )
    assert capacity.main(["--check"]) == 0


def test_a_stale_page_is_caught_and_refreshed() -> None:
    """A changed figure between the markers is seen, and replace_block restores the page."""
    stale = DOC.replace("33,889", "33,000", 1)
    assert stale != DOC
    assert capacity.replace_block(stale, capacity.render(capacity.STANDARD_SIZES)) == DOC
    with pytest.raises(ValueError):
        capacity.replace_block("no markers here", "x")


def test_one_million_users_pong_every_30_s() -> None:
    """1,000,000 users at a 30 s ping write 33,333 pongs/s; 3,333 at PONG_WRITE_INTERVAL=300."""
    assert round(capacity.pong_writes_per_s(1_000_000)) == 33_333
    assert round(capacity.pong_writes_per_s(1_000_000, 300)) == 3_333
    # A write interval shorter than the ping changes nothing: there is one pong per round.
    assert capacity.pong_writes_per_s(1_000_000, 10) == capacity.pong_writes_per_s(1_000_000)


def test_a_user_costs_2976_writes_a_day() -> None:
    """2,880 pongs plus 24 reconnects of 4 writes: docs/operations.md's ~2,980 a day."""
    lo = capacity.load(1)
    per_day = (lo.members_writes + lo.sessions_writes) * 86_400
    assert round(per_day) == 2_880 + 24 * 4
    assert round(lo.members_writes * 86_400) == 2_880 + 24 * 2


def test_instances_at_1000_sockets_each() -> None:
    """Cloud Run's 1,000 concurrent requests make 1,000 instances for a million sockets."""
    assert capacity.instances_for(1) == 1
    assert capacity.instances_for(1_000) == 1
    assert capacity.instances_for(1_001) == 2
    assert capacity.instances_for(1_000_000) == 1_000
    assert capacity.instances_for(10_000_000) == capacity.SUBSCRIPTIONS_PER_TOPIC


def test_members_caps() -> None:
    """100 shards of 500 writes/s hold about 1.48 million users; unsharded, about 14,750."""
    assert capacity.members_cap() == 50_000
    assert capacity.members_cap(sharded=False) == 500
    # By hand: 500 / (1/30 + 2/3600) writes per user per second.
    assert capacity.users_within_members_cap(sharded=False) == math.floor(500 / (1 / 30 + 2 / 3600))
    assert 1_470_000 < capacity.users_within_members_cap() < 1_480_000


def test_the_shards_counted_are_the_deployed_ones() -> None:
    """The script's MEMBER_SHARDS is the one the gateway and the sweep use."""
    assert capacity.MEMBER_SHARDS == gateway_schema.MEMBER_SHARDS == sweep_schema.MEMBER_SHARDS


def test_ten_million_users_are_flagged_with_their_fix() -> None:
    """10M users with every pong written exceed 50,000 writes/s; PONG_WRITE_INTERVAL=225 fits."""
    assert capacity.load(10_000_000).members_writes > 50_000
    fit = capacity.smallest_pong_write_interval(10_000_000)
    assert fit == 225
    assert capacity.load(10_000_000, fit).members_writes <= 50_000
    assert capacity.load(10_000_000, fit - 1).members_writes > 50_000
    flagged = capacity.flags(10_000_000)
    assert any("members" in f and "PONG_WRITE_INTERVAL=225" in f for f in flagged)
    assert any("subscriptions per topic" in f for f in flagged)
    assert not any("members" in f for f in capacity.flags(1_000_000))


def test_pubsub_by_hand_at_ten_instances() -> None:
    """10,000 users on 10 instances: 150 crossing sends/s, each a publish and a receipt billed at
    all 10 subscriptions, plus a broadcast a minute with 9 receipts."""
    fo = capacity.fanout(10_000)
    broadcasts = 1 / 60
    assert fo.sends == pytest.approx(10_000 / 60)
    assert fo.published == pytest.approx(2 * 150 + broadcasts * 10)
    assert fo.deliveries == pytest.approx(fo.published * 10)
    # One instance alone publishes nothing for a send.
    assert capacity.fanout(1_000).published == pytest.approx(broadcasts)


def test_costs_by_hand() -> None:
    """Cloud Run at $0.000018/vCPU-s and $0.000002/GiB-s for 730 h; Firestore past its free tier."""
    assert capacity.cloud_run_usd(1_000) == pytest.approx(
        1_000 * (0.000018 + 0.5 * 0.000002) * 730 * 3600
    )
    lo = capacity.load(10_000)
    writes_per_day = 10_000 * (2_880 + 96) + 10 * 1_440
    reads_per_day = 10_000 * 24 + 10 * 1_440 + 100 * 1_440
    by_hand = ((writes_per_day - 20_000) * 0.09 + (reads_per_day - 50_000) * 0.03) / 100_000
    assert capacity.firestore_usd(lo, messaging=False) == pytest.approx(by_hand * 730 / 24)


def test_sweep_burst_at_the_measured_rate() -> None:
    """10 % of a million users at 410 sign-outs/s take about 4 minutes."""
    assert capacity.sweep_seconds(1_000_000) == pytest.approx(100_000 / 410)


def test_the_prices_on_the_page_are_the_scripts() -> None:
    """Each list price the script uses is quoted in the page's prices section."""
    prices = DOC.split("## Prices used", 1)[1]
    for figure in (
        f"${capacity.FIRESTORE_USD_PER_100K_READS:.2f} per 100,000",
        f"${capacity.FIRESTORE_USD_PER_100K_WRITES:.2f} per 100,000",
        f"{capacity.FIRESTORE_FREE_READS_PER_DAY:,} reads",
        f"{capacity.FIRESTORE_FREE_WRITES_PER_DAY:,} writes",
        f"${capacity.PUBSUB_USD_PER_TIB:g} per TiB",
        f"first {capacity.PUBSUB_FREE_GIB_PER_MONTH:g} GiB",
        f"${capacity.CLOUD_RUN_USD_PER_VCPU_S:.6f} per vCPU-second",
        f"${capacity.CLOUD_RUN_USD_PER_GIB_S:.6f} per GiB-second",
    ):
        assert figure in prices, figure
