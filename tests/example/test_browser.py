"""End-to-end: the example in headless Chromium, driven by Playwright, against a live server.

Chromium is the system's (Debian's ``chromium`` package), never a browser build
that Playwright downloads. Without it, or without the ``playwright`` package,
these tests skip with the reason (and fail under CI=true).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from example_project.screenshot import VIEWPORT, chromium_path, launch
from tests.conftest import skip_or_fail

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture
def chromium() -> str:
    """The Chromium binary, checked before any database work is done."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        skip_or_fail("The playwright package is not installed (pip install playwright).")
    executable = chromium_path()
    if executable is None:
        skip_or_fail("Chromium is not installed (apt-get install chromium).")
    return str(executable)


@pytest.fixture
def page(chromium: str, live_server: Any, corpus: Any, admin_user: Any) -> Iterator[Any]:
    """A browser page; the database is filled before the browser starts.

    Playwright's sync API runs an event loop in this thread, where Django then
    refuses database calls: the tests only talk to the live server.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright, chromium)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            context.set_default_timeout(20_000)
            yield context.new_page()
            context.close()
        finally:
            browser.close()


def test_search_filter_and_more_like_this(page: Any, live_server: Any) -> None:
    from playwright.sync_api import expect

    page.goto(f"{live_server.url}/")
    query = page.get_by_label("Search the documentation")
    expect(query).to_be_focused()  # type right away, submit with Enter
    page.keyboard.type("write rows to a CSV file")
    page.keyboard.press("Enter")

    page.wait_for_url(re.compile(r"\?q=write\+rows\+to\+a\+CSV\+file"))
    heading = page.locator("#results-heading")
    expect(heading).to_contain_text("10 results for “write rows to a CSV file”")
    expect(heading).to_contain_text(re.compile(r"in \d+\.\d ms"))
    hits = page.locator("ol.hits > li")
    expect(hits).to_have_count(10)
    expect(hits.first.locator("h3")).to_contain_text("csv.")
    scores = [
        float(v)
        for v in page.locator("ol.hits .score-fused data").evaluate_all("e => e.map(d => d.value)")
    ]
    assert scores == sorted(scores, reverse=True)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "search-page.png"), full_page=True)

    page.get_by_label("Kind").select_option("function")
    page.get_by_label("Number of results").fill("5")
    page.get_by_role("button", name="Search").click()
    expect(heading).to_contain_text("5 results for “write rows to a CSV file”")
    expect(hits).to_have_count(5)
    assert set(page.locator("ol.hits .kind").all_inner_texts()) == {"Function"}

    title = hits.first.locator("h3").inner_text()
    hits.first.get_by_role("link", name=f"More like {title}").click()
    expect(heading).to_contain_text(f"documents like {title}")
    expect(hits).to_have_count(10)
    assert title not in page.locator("ol.hits h3").all_inner_texts()

    # The document's own page lists similar documents too.
    page.locator("#results-heading a").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(title)
    expect(page.locator("ol.hits > li")).to_have_count(5)


def test_empty_query_and_no_results(page: Any, live_server: Any) -> None:
    from playwright.sync_api import expect

    page.goto(f"{live_server.url}/")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("status")).to_contain_text("Type a few words to search")

    page.get_by_label("Search the documentation").fill("compress")
    page.get_by_label("Kind").select_option("topic")
    page.get_by_label("Module").fill("gzip")
    page.get_by_label("Module").press("Enter")
    expect(page.locator("#results-heading")).to_contain_text("No results for “compress”")
    expect(page.locator(".results .notice")).to_contain_text("clear the kind or the module")


def test_admin_changelist_search(page: Any, live_server: Any) -> None:
    from playwright.sync_api import expect

    page.goto(f"{live_server.url}/admin/docs/document/")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("password")
    page.get_by_role("button", name="Log in").click()

    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(25)
    page.locator("#searchbar").fill("compress data")
    page.locator("#searchbar").press("Enter")
    page.wait_for_url(re.compile(r"\?q=compress\+data"))
    expect(page.locator("#result_list thead")).to_contain_text("similarity", ignore_case=True)
    expect(rows.first).to_contain_text("gzip")
