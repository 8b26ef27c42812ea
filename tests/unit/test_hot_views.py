"""The query service's views kept in process: bounded by bytes, and a listing page kept only
until any request changes."""

from __future__ import annotations

from queries_service.hot_views import LocalViews


def test_views_kept_in_process_are_bounded_by_bytes() -> None:
    local = LocalViews(max_entries=1000, max_bytes=10_000)
    local.sources = local.live_sources = 1
    for n in range(100):
        local.keep(f"templates?q={n}", b"x" * 1000, local.stamp(f"templates?q={n}"))
    assert local.size <= 10_000 and len(local.docs) < 10
    assert local.get("templates?q=99") is not None  # the newest are kept
    assert local.get("templates?q=0") is None


def test_listing_pages_are_kept_until_any_request_changes() -> None:
    from queries_service.hot_views import PAGE_PREFIX
    from shared import keys

    local = LocalViews()
    local.sources = local.live_sources = 1
    stamp = local.stamp(PAGE_PREFIX)
    local.keep(PAGE_PREFIX + "limit=50", b"page", stamp, stamp_key=PAGE_PREFIX)
    assert local.get(PAGE_PREFIX + "limit=50") == b"page"
    local.invalidate(keys.machine_key("m1"))  # not a request: pages stay
    assert local.get(PAGE_PREFIX + "limit=50") == b"page"
    local.invalidate(keys.request_summary_key("r1"))
    assert local.get(PAGE_PREFIX + "limit=50") is None
    # A page read while a request changed is not kept: it may predate the change.
    local.keep(PAGE_PREFIX + "limit=50", b"old", stamp, stamp_key=PAGE_PREFIX)
    assert local.get(PAGE_PREFIX + "limit=50") is None
    # Nor after the generation table was emptied (a stamp of another epoch never matches).
    fresh = local.stamp(PAGE_PREFIX)
    local.generation = {f"k{n}": 1 for n in range(4 * local.max_entries)}
    local.invalidate("k")
    local.keep(PAGE_PREFIX + "limit=50", b"older", fresh, stamp_key=PAGE_PREFIX)
    assert local.get(PAGE_PREFIX + "limit=50") is None
