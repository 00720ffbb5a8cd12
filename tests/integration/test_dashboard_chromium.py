"""The web dashboard in a real headless Chromium, against real ``garage-peer`` processes.

P serves ``tiny`` from a StandInBackend (an instrument, not a model); C bootstraps from P and asks
for API keys (``--require-keys``). Chats and a small batch job go through C first, so its ledger, its
recent requests and its job list have something in them; then Chromium (Debian's, driven by its
chromedriver through selenium) opens C's ``/dashboard`` with no key, is asked for one, gets a wrong
key refused, and shows C, P, the model, the balances and the job once the right key is given.
Everything the page loads must come from C's own origin.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from garage_p2p.cli.peer_process import PeerProcess
from tools.testkit import wait_until

from .helpers import provider_and_keyed_consumer

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHATS = 3
JOB_LINES = 8
WRONG_KEY = "gk-00000000-" + "x" * 43
BROWSER_SCHEMES = {"chrome", "chrome-untrusted", "about", "data", "blob"}
"""Pages and resources inside the browser (its new-tab page): no network."""
JSON_APIS = ["status", "peers", "models", "ledger", "jobs", "requests"]


class Mesh:
    def __init__(self, p: PeerProcess, c: PeerProcess, key: str, job_id: str) -> None:
        self.p, self.c, self.key, self.job_id = p, c, key, job_id
        self.origin = c.api_url.removesuffix("/v1")

    def api(self, name: str) -> httpx.Response:
        return httpx.get(f"{self.origin}/garage/v1/{name}", headers={"authorization": f"Bearer {self.key}"}, timeout=10)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("dash")
    with provider_and_keyed_consumer(root, "dashboard") as (p, c, key):
        auth = {"authorization": f"Bearer {key}"}
        origin = c.api_url.removesuffix("/v1")
        for i in range(CHATS):
            chat = {"model": "tiny", "messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": 4}
            answer = httpx.post(c.api_url + "/chat/completions", json=chat, headers=auth, timeout=30)
            assert answer.status_code == 200 and answer.headers["x-garage-provider"] == p.peer_id, answer.text
        lines = "\n".join(
            json.dumps(
                {
                    "custom_id": f"line-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": "tiny", "messages": [{"role": "user", "content": str(i)}], "max_tokens": 4},
                }
            )
            for i in range(JOB_LINES)
        )
        submitted = httpx.post(
            f"{origin}/garage/v1/jobs", json={"input": lines, "shard_size": 4}, headers=auth, timeout=30
        )
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]
        done = Mesh(p, c, key, job_id)
        wait_until(lambda: done.api(f"jobs/{job_id}").json()["status"] == "completed", 60, "the job completing")

        def served_by_p() -> int:
            rows = [b for b in done.api("ledger").json()["peers"] if b["peer_id"] == p.peer_id]
            return rows[0]["contributed"]["requests"] if rows else 0

        wait_until(lambda: served_by_p() >= CHATS + JOB_LINES, 60, "C's ledger holding P's receipts")
        yield done


@pytest.fixture(scope="module")
def chromium(tmp_path_factory) -> Iterator[webdriver.Chrome]:
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), (
        "chromium and chromium-driver are missing: run bootstrap/dev-env.sh"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,2200",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    # Every request the browser sends (performance log) and every console message (browser log).
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def text(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def shown(driver, css: str) -> bool:
    try:
        return driver.find_element(By.CSS_SELECTOR, css).is_displayed()
    except WebDriverException:
        return False


ROWS = """
return Array.from(document.querySelectorAll('#' + arguments[0] + ' tbody tr')).map(tr => ({
  cells: Array.from(tr.cells).map(c => c.innerText.trim()),
  peer: tr.cells[0].querySelector('[data-peer]')?.getAttribute('data-peer') ?? null,
  peers: Array.from(tr.querySelectorAll('[data-peer]')).map(e => e.getAttribute('data-peer')),
  progress: tr.querySelector('progress')
    ? [tr.querySelector('progress').value, tr.querySelector('progress').max]
    : null,
}));
"""


def rows(driver, table: str) -> list[dict]:
    """The rows of ``table`` in one snapshot (the page redraws its tables every 2 s)."""
    return driver.execute_script(ROWS, table)


def row_of(driver, table: str, peer_id: str) -> dict | None:
    """The row of ``table`` whose first cell names ``peer_id``."""
    return next((r for r in rows(driver, table) if r["peer"] == peer_id), None)


def enter_key(driver, key: str) -> None:
    field = driver.find_element(By.ID, "key-input")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.ID, "key-submit").click()


def test_a_browser_without_the_key_gets_401_from_the_json_apis(mesh, chromium):
    chromium.get(mesh.origin + "/dashboard")
    chromium.execute_script("sessionStorage.clear()")
    statuses = chromium.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all(arguments[0].map(n => fetch('/garage/v1/' + n, {cache: 'no-store'}).then(r => r.status)))"
        ".then(done);",
        JSON_APIS,
    )
    assert statuses == [401] * len(JSON_APIS)


def test_the_dashboard_asks_for_the_key_then_shows_the_peer_the_mesh_the_ledger_and_the_jobs(mesh, chromium):
    driver, c, p = chromium, mesh.c, mesh.p
    wait = WebDriverWait(driver, 30)
    driver.get_log("browser")  # what an earlier test left

    # The shell itself is served without a key, with a strict policy; the data is not.
    shell = httpx.get(mesh.origin + "/dashboard", timeout=10)
    assert shell.status_code == 200 and shell.headers["content-type"].startswith("text/html")
    assert (
        "default-src 'self'" in shell.headers["content-security-policy"]
        and "unsafe-inline" not in shell.headers["content-security-policy"]
    )
    assert shell.headers["x-content-type-options"] == "nosniff" and c.peer_id not in shell.text
    for asset, media_type in [
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
        ("/favicon.svg", "image/svg+xml"),
    ]:
        served = httpx.get(mesh.origin + "/dashboard" + asset, timeout=10)
        assert served.status_code == 200 and served.headers["content-type"].startswith(media_type), asset
        assert served.headers["cache-control"] == "no-cache" and served.headers["x-content-type-options"] == "nosniff"
        again = httpx.get(
            mesh.origin + "/dashboard" + asset, headers={"if-none-match": served.headers["etag"]}, timeout=10
        )
        assert again.status_code == 304 and not again.content
    script = httpx.get(mesh.origin + "/dashboard/dashboard.js", timeout=10).text
    assert not any(
        sink in script for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(")
    )
    refused = httpx.get(c.api_url + "/models", timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"

    driver.get(mesh.origin + "/dashboard")
    wait.until(lambda d: shown(d, "#key-panel") and shown(d, "#key-error"))
    assert "API key" in text(driver, "#key-error")  # the server's own message
    assert not shown(driver, "#content") and c.peer_id not in driver.find_element(By.TAG_NAME, "body").text

    enter_key(driver, WRONG_KEY)
    wait.until(lambda d: shown(d, "#key-panel") and "Incorrect API key" in text(d, "#key-error"))
    assert driver.execute_script("return sessionStorage.getItem('garage.dashboard.key')") is None

    enter_key(driver, mesh.key)
    wait.until(lambda d: shown(d, "#peer-id") and text(d, "#peer-id") == c.peer_id)
    assert not shown(driver, "#key-panel")
    assert driver.execute_script("return sessionStorage.getItem('garage.dashboard.key')") == mesh.key

    # The mesh: P with the connection kind C's API reports, the model with its one provider.
    connection = next(x["connection"] for x in mesh.api("peers").json()["peers"] if x["peer_id"] == p.peer_id)
    assert connection in ("direct", "relayed")
    wait.until(lambda d: row_of(d, "peers-table", p.peer_id) is not None)
    assert row_of(driver, "peers-table", p.peer_id)["cells"][1] == connection
    assert text(driver, f'#mesh-summary [data-count="{connection}"]') == f"1 {connection}"
    [tiny] = [r for r in rows(driver, "models-table") if r["cells"][0] == "tiny"]
    assert tiny["cells"][1] == "1" and tiny["peers"] == [p.peer_id]

    # The ledger: P gave GPU time for every chat and job line, C used it.
    wait.until(
        lambda d: (
            row_of(d, "balances-table", p.peer_id) is not None and row_of(d, "balances-table", c.peer_id) is not None
        )
    )
    given = row_of(driver, "balances-table", p.peer_id)["cells"]
    assert int(given[4].replace(",", "")) >= CHATS + JOB_LINES and given[1] not in ("0", "—")
    used = row_of(driver, "balances-table", c.peer_id)["cells"]
    assert int(used[5].replace(",", "")) >= CHATS + JOB_LINES and "this peer" in used[0]

    # The job, finished, with its progress.
    [job] = [r for r in rows(driver, "jobs-table") if r["cells"][0] == mesh.job_id]
    assert job["cells"][2] == "completed" and job["cells"][3] == f"{JOB_LINES} / {JOB_LINES}"
    assert job["progress"] == [JOB_LINES, JOB_LINES]

    # Live requests: C's recent chats, or "not available" where this daemon has no such API.
    if mesh.api("requests").status_code == 404:
        wait.until(lambda d: shown(d, "#requests-unavailable"))
    else:
        wait.until(
            lambda d: (
                len(
                    [
                        r
                        for r in rows(d, "recent-table")
                        if r["peers"] == [p.peer_id] and r["cells"][1:3] == ["consumer", "tiny"]
                    ]
                )
                >= CHATS
            )
        )
        assert not shown(driver, "#requests-unavailable")

    # Nothing left C's origin: not the page's own loads, nor anything the browser sent on its own.
    origin = mesh.origin + "/"
    loaded = driver.execute_script(
        "return [location.href, ...performance.getEntries().map(e => e.name).filter(n => n.includes(':'))]"
    )
    assert [u for u in loaded if not u.startswith(origin)] == [], loaded
    sent = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in sent if m["method"] == "Network.requestWillBeSent"]
    urls = [u for u in urls if u.partition(":")[0] not in BROWSER_SCHEMES]
    assert (
        any(u.startswith(origin + "garage/v1/") for u in urls) and [u for u in urls if not u.startswith(origin)] == []
    ), urls
    assert driver.execute_script("return document.querySelectorAll('script:not([src]), [style]').length") == 0

    # No script error, no policy violation; the only errors logged are the two refusals of /v1/models.
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    expected = [
        e for e in severe if e.get("source") == "network" and "/v1/models" in e["message"] and " 401 " in e["message"]
    ]
    if mesh.api("requests").status_code == 404:
        expected += [
            e
            for e in severe
            if e.get("source") == "network" and "/garage/v1/requests" in e["message"] and " 404 " in e["message"]
        ]
    assert [e for e in severe if e not in expected] == [], severe
    assert len([e for e in expected if "/v1/models" in e["message"]]) == 2

    if target := os.environ.get("GARAGE_DASHBOARD_SCREENSHOT"):  # for a person to look at: laptop, then phone width
        driver.save_screenshot(target)
        size = driver.get_window_size()
        driver.set_window_size(390, 1800)
        driver.save_screenshot(target.removesuffix(".png") + "-phone.png")
        driver.set_window_size(size["width"], size["height"])

    # A peer that goes away: the page says so and keeps what it last showed.
    c.stop()
    wait.until(lambda d: shown(d, "#global-error") and "Cannot reach the peer" in text(d, "#global-error"))
    assert text(driver, "#live-state") == "unreachable" and text(driver, "#peer-id") == c.peer_id
