"""The dashboard in real headless Chromium (Debian's, driven through its ChromeDriver by Selenium) against a real
two-peer swarm (issue 7): every page loads and shows live data, updates without a reload, a user proposes and
votes through the UI and sees the tally move, the vote reaches the other peer's ledger, and a write without the
token is refused. Screenshots of every page, at 1280×800 and at phone width, go to test-artifacts/dashboard/."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from koinon.ledger.store import LedgerStore
from tests.integration.swarmkit import FAST, PeerProcess, stop_all, wait_until

pytestmark = pytest.mark.slow

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
PAGES = ["swarm", "training", "ledger", "governance", "models"]

if not (CHROMIUM.exists() and DRIVER.exists()):
    pytest.skip(
        "Debian's chromium and chromium-driver are not installed (`make test` installs them as root)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard")
    a = PeerProcess(
        root / "peer-a", extra=[*FAST, "--wait-for-peers", "2", "--min-contributors", "2", "--dashboard", "127.0.0.1:0"]
    )
    peers = [a]
    try:
        b = PeerProcess(root / "peer-b", a.maddrs(), extra=[*FAST, "--wait-for-peers", "2"])
        peers.append(b)
        wait_until(lambda: (a.home / "dashboard.url").exists(), 60, "the dashboard to start", a)
        wait_until(lambda: a.last_round() >= 2 and b.last_round() >= 2, 180, "two rounds on both peers", a, b)
        url = (a.home / "dashboard.url").read_text().strip()
        token = (a.home / "dashboard.token").read_text().strip()
        yield {"a": a, "b": b, "url": url, "token": token}
    finally:
        stop_all(peers)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="koinon-chromium-")
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
        "--window-size=1280,800",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def text(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # a section being swapped by a live update: look again
            last = e
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


def test_pages_load_with_live_data_and_are_usable_by_keyboard_and_on_a_phone(swarm, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{swarm['url']}?token={swarm['token']}")
    assert browser.current_url.rstrip("/").endswith("/swarm"), "the token was not taken out of the address"
    members = [swarm["a"].metrics("start")[0]["member"], swarm["b"].metrics("start")[0]["member"]]
    page = text(browser, "#swarm-peers")
    assert all(m[-8:] in page for m in members) and page.count("online") >= 2, page
    for name in PAGES:
        browser.find_element(By.LINK_TEXT, name.capitalize()).click()
        wait_for(lambda name=name: browser.current_url.endswith(f"/{name}"), 20, f"the {name} page")
        errors = [el.text for el in browser.find_elements(By.CSS_SELECTOR, "main .bad")]
        assert "Traceback" not in browser.page_source and not errors, f"{name}: {errors}"
        unlabeled = browser.execute_script(
            "return [...document.querySelectorAll('input:not([type=hidden]),select,textarea')]"
            ".filter(c => !(c.labels && c.labels.length) && !c.getAttribute('aria-label')).map(c => c.outerHTML)"
        )
        assert unlabeled == [], f"{name}: controls without a label: {unlabeled}"
        browser.set_window_size(1280, 800)
        browser.save_screenshot(str(ARTIFACTS / f"{name}-1280x800.png"))
        browser.set_window_size(390, 844)
        overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{name}: the page is {overflow} px wider than a phone screen"
        browser.save_screenshot(str(ARTIFACTS / f"{name}-390x844.png"))
        browser.set_window_size(1280, 800)
    # training: a plot and the rounds; then a new round appears without a reload
    browser.find_element(By.LINK_TEXT, "Training").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#training-plots svg polyline"), 20, "the loss plot")
    browser.execute_script("window.__koinon_same_page = true")
    first = text(browser, "#training-rounds tbody tr")
    wait_for(lambda: text(browser, "#training-rounds tbody tr") != first, 120, "a new round to show up by itself")
    assert browser.execute_script("return window.__koinon_same_page === true"), "the page reloaded"
    # keyboard: Tab from the top reaches the navigation, Enter follows the link
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    focused = browser.switch_to.active_element
    assert focused.tag_name == "a" and focused.text == "Swarm", focused.get_attribute("outerHTML")
    focused.send_keys(Keys.ENTER)
    wait_for(lambda: browser.current_url.endswith("/swarm"), 20, "Enter to follow the link")
    # ledger: an event's page carries an inclusion proof that verifies
    browser.find_element(By.LINK_TEXT, "Ledger").click()

    def open_event() -> bool:  # find and click in one try: a live update may swap the table in between
        links = browser.find_elements(By.XPATH, "//tr[td[1][starts-with(., '#')]]//a")
        if links:
            links[-1].click()
        return bool(links)

    wait_for(open_event, 20, "a final event to open")
    wait_for(lambda: "verified here" in text(browser, "main"), 30, "the inclusion proof to verify")
    browser.save_screenshot(str(ARTIFACTS / "ledger-event-1280x800.png"))


def test_propose_and_vote_through_the_ui_reach_the_other_peer(swarm, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(f"{swarm['url'].rstrip('/')}/governance?token={swarm['token']}")
    Select(browser.find_element(By.ID, "p-kind")).select_by_value("resolution")
    title = f"Plant a tree {time.time():.0f}"
    browser.find_element(By.ID, "p-text").send_keys(title)
    browser.find_element(By.XPATH, "//form[@aria-label='New proposal']//button[@type='submit']").click()
    status = wait_for(
        lambda: (t := text(browser, "form[aria-label='New proposal'] .status")) not in ("", "sending…") and t, 30,
        "the proposal's answer",
    )  # fmt: skip
    assert status.startswith("proposal "), status
    pid = status.split()[1]
    card = f"#p-{pid}"
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, card), 60, "the proposal to appear without a reload")

    def vote() -> str:
        browser.find_element(By.CSS_SELECTOR, f"{card} button[value=yes]").click()
        answer = wait_for(lambda: (t := text(browser, "#flash")) not in ("", "sending…") and t, 30, "the vote's answer")
        return answer if answer.startswith("voted yes") else ""

    wait_for(vote, 90, "voting to open and the vote to be accepted")
    wait_for(lambda: "yes 0" not in text(browser, f"{card} .tally") and "yes" in text(browser, f"{card} .tally"), 90,
             "the tally to count the vote")  # fmt: skip
    browser.save_screenshot(str(ARTIFACTS / "governance-voted-1280x800.png"))
    me = swarm["a"].metrics("start")[0]["member"]

    def vote_on_b() -> bool:
        store = LedgerStore(swarm["b"].home / "ledger.sqlite")
        try:
            return any(e.body["proposal"].hex() == pid for e in store.iter_events(kind="vote", author=me))
        finally:
            store.close()

    wait_for(vote_on_b, 60, "the vote in the other peer's ledger")


def test_a_write_without_the_token_is_refused(swarm, browser):
    from selenium.webdriver.common.by import By

    body = json.dumps({"kind": "resolution", "text": "no token"}).encode()
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        request = urllib.request.Request(
            f"{swarm['url'].rstrip('/')}/api/propose",
            data=body,
            headers={"Content-Type": "application/json", **headers},
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=30)
        assert e.value.code == 401 and "token" in json.loads(e.value.read())["error"]
    browser.get(f"{swarm['url'].rstrip('/')}/governance")
    browser.execute_script("sessionStorage.removeItem('koinon-token')")
    browser.get(f"{swarm['url'].rstrip('/')}/governance")
    browser.find_element(By.ID, "p-text").send_keys("Without the token")
    browser.find_element(By.XPATH, "//form[@aria-label='New proposal']//button[@type='submit']").click()
    status = wait_for(
        lambda: (t := text(browser, "form[aria-label='New proposal'] .status")) not in ("", "sending…") and t, 30,
        "the refusal",
    )  # fmt: skip
    assert "needs the dashboard token" in status, status
    browser.save_screenshot(str(ARTIFACTS / "governance-refused-1280x800.png"))
