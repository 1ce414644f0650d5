"""The dashboard (issue 13): the page and its files under a real uvicorn, then the page in a real headless
Chromium (Debian's `chromium`, driven by playwright) following a real submission through /events."""

from __future__ import annotations

import re
import shutil
import socket
from importlib.resources import files

import pytest
from test_web import Served

from conftest import write_csv
from csvembed.api import Csvembed
from csvembed.web.dashboard import ASSETS

TOKEN = "dashboard-test-token"
# Rows 3 and 5 have no text: they fail for good, with this reason, so that the failures table has rows.
# Row 5's id is markup: the page must show it as text, never run it.
MARKUP_ID = "<img src=x onerror=alert(1)>"
CSV = f"id,text\nA1,red shoes\nA2,blue hat\nA3,\nA4,green scarf\n{MARKUP_ID},\nA6,yellow coat\n"
EMPTY_TEXT = "empty text: nothing to embed"


def raw_get(url: str, path: str) -> int:
    """The status of a GET of `path` sent as is: httpx would resolve the dot segments before sending."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return int(connection.recv(200).split(b" ")[1])


@pytest.fixture
def api(env) -> Csvembed:
    return Csvembed(env.settings, connection=env.connection)


@pytest.fixture
def served(api):
    with Served(api, interval=0.2) as client:
        yield client


# --- the page and its files ---------------------------------------------------------------------------


def test_page_is_served_with_a_strict_csp_and_no_inline_script(served):
    response = served.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe" not in csp
    page = response.text
    assert page == (files("csvembed.web") / "static" / "dashboard.html").read_text(encoding="utf-8")
    assert re.findall(r"<script[^>]*>", page) == ['<script src="static/dashboard.js" defer>']
    assert not re.search(r"\son[a-z]+=", page)  # no inline event handler either


def test_static_files_come_from_the_allow_list_only(served):
    script = served.get("/static/dashboard.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "EventSource" in script.text
    style = served.get("/static/dashboard.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    for name in ("nope.js", "dashboard.html", "__init__.py", "..%2Fdashboard.py", "..%2F..%2F..%2Fpyproject.toml"):
        assert served.get(f"/static/{name}").status_code == 404, name
    for path in ("/static/../pyproject.toml", "/static/../../../pyproject.toml", "/static/..%2f..%2fpyproject.toml",
                 "/static/", "/static"):
        assert raw_get(str(served.base_url), path) == 404, path


def test_the_token_gate_lets_the_page_through_but_not_the_events(api):
    with Served(api, token=TOKEN, interval=0.2) as client:
        assert client.get("/").status_code == 200
        for name in ASSETS:
            assert client.get(f"/static/{name}").status_code == 200
        assert client.get("/events").status_code == 401
        assert client.get("/static/nope.js").status_code == 401  # only the allow-list is open
        with client.stream("GET", "/events", params={"token": TOKEN}) as stream:
            assert stream.status_code == 200


def test_the_files_ship_as_package_data():
    static = files("csvembed.web") / "static"
    for name in ("dashboard.html", *ASSETS):
        assert (static / name).is_file(), f"{name} is not package data: see [tool.setuptools.package-data]"


# --- the page in a real browser -------------------------------------------------------------------------


@pytest.fixture
def browser():
    """Debian's chromium under playwright: `playwright install` cannot download a browser here."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("the dashboard tests need Debian's chromium: apt-get install chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


def open_page(browser, url: str):
    """A 1280x800 page at `url` that records what the console and CSP complain about."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.complaints = []
    page.on("console", lambda message: message.type == "error" and page.complaints.append(message.text))
    page.on("pageerror", lambda error: page.complaints.append(str(error)))
    page.on("dialog", lambda dialog: page.complaints.append(f"a dialog opened: {dialog.message}"))
    page.goto(url)
    return page


def bar(submission_id: str, percent: int) -> str:
    return f'.bar[data-submission="{submission_id}"][data-percent="{percent}"]'


@pytest.mark.slow
def test_the_bar_follows_a_submission_to_100_percent_and_the_failures_show(api, env, submit, drain, fake_embedder,
                                                                          browser):
    result = submit(write_csv(env.dir / "items.csv", CSV), model=fake_embedder.name, id_column="id",
                    text_columns=("text",))
    with Served(api, interval=0.2) as client:
        page = open_page(browser, str(client.base_url) + "/")
        page.wait_for_selector(bar(result.id, 0), timeout=15_000)  # drawn from /events before any worker ran
        assert page.get_attribute("#connection", "data-state") == "live"

        drain(model=fake_embedder)
        page.wait_for_selector(bar(result.id, 100), timeout=15_000)  # the page updated itself
        card = page.locator(f'.card[data-submission="{result.id}"]')
        assert card.locator(".id").text_content() == result.id
        assert card.locator(".state").text_content() == "partial"
        assert card.locator(".percent").text_content() == "100%"
        assert page.get_attribute(bar(result.id, 100), "aria-valuenow") == "100"
        page.wait_for_selector(f'#failures tr[data-submission="{result.id}"]', timeout=15_000)
        failures = page.locator("#failures tbody tr")
        assert failures.count() == 2
        assert sorted(failures.nth(i).locator("td").nth(1).text_content() for i in range(2)) == ["3", "5"]
        assert all(failures.nth(i).locator("td").nth(3).text_content() == EMPTY_TEXT for i in range(2))
        assert sorted(failures.nth(i).locator("td").nth(2).text_content() for i in range(2)) == [MARKUP_ID, "A3"]
        assert page.locator("img").count() == 0
        assert EMPTY_TEXT in page.content()
        assert page.complaints == []  # no CSP violation, no script error
        page.close()


@pytest.mark.slow
def test_the_token_in_the_page_url_reaches_the_events(api, env, submit, drain, fake_embedder, browser):
    result = submit(write_csv(env.dir / "items.csv", CSV), model=fake_embedder.name, id_column="id",
                    text_columns=("text",))
    drain(model=fake_embedder)
    with Served(api, token=TOKEN, interval=0.2) as client:
        page = open_page(browser, f"{client.base_url}/?token={TOKEN}")
        page.wait_for_selector(bar(result.id, 100), timeout=15_000)
        page.close()

        refused = open_page(browser, f"{client.base_url}/")
        refused.wait_for_selector('#connection[data-state="unauthorized"]', timeout=15_000)
        note = refused.text_content("#connection")
        assert "disconnected" in note and "?token=" in note
        assert refused.locator(".card").count() == 0
        assert result.id not in refused.content()
        refused.close()


@pytest.mark.slow
def test_an_unreachable_server_shows_the_disconnected_note(browser, api):
    """The stream drops (the server stops): the page says so and keeps what it last drew."""
    served = Served(api, interval=0.2)
    with served as client:
        page = open_page(browser, str(client.base_url) + "/")
        page.wait_for_selector('#connection[data-state="live"]', timeout=15_000)
        served.server.should_exit = served.server.force_exit = True  # not waiting for the open stream to end
        page.wait_for_selector('#connection[data-state="retrying"]', timeout=15_000)
        assert "disconnected, retrying" in page.text_content("#connection")
        page.close()

