"""The web console (issue 15) in real headless Chromium (Debian's /usr/bin/chromium through
/usr/bin/chromedriver) on real uvicorn: a store of a few thousand sessions over several days,
charts checked in the rendered page against the Python API, the replay slider against
``session(as_of=...)``, and scopes (an analyst key cannot open the audit page).

Screenshots of each page go to the test's tmp dir (and to ``$CHATLEDGER_CONSOLE_SCREENSHOTS`` if set,
e.g. docs/img)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from chatledger import ChatLedger, ManualClock, SessionPolicy
from chatledger.entrypoints.http.app import create_app

from .test_aio_docs import served

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.slow  # a browser and a seeded store: not the fast loop
START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # a Monday
SESSIONS, DAYS = 2400, 6
POLICY = SessionPolicy(idle_timeout=timedelta(minutes=30))
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def seed(url: str, clock: ManualClock) -> dict[str, str]:
    """SESSIONS sessions over DAYS days of 700 visitors (most return), a few linked to users,
    a few ended on purpose (one custom reason), the rest idle: timed out."""
    step = timedelta(days=DAYS) / SESSIONS
    with ChatLedger.open(url, clock=clock, policy=POLICY) as ledger:
        clock.set(START + timedelta(days=DAYS, hours=2))  # every event below is dated by at=
        for i in range(SESSIONS):
            at = START + i * step
            visitor = f"v-{i % 700}"
            turn = ledger.receive(
                visitor, f"question {i}", channel=("web", "whatsapp", "sms")[i % 3], at=at
            )
            ledger.reply(turn.session_id, f"answer {i}", at=at + timedelta(seconds=5 + i % 40))
            if i % 4 == 0:
                ledger.receive(visitor, f"follow-up {i}", at=at + timedelta(minutes=1 + i % 9))
            if i % 11 == 0:
                ledger.end_session(
                    turn.session_id,
                    reason="handoff" if i % 2 else "ended",
                    at=at + timedelta(minutes=10),
                )
            if i % 50 == 0:
                ledger.link_identity(visitor, f"user-{visitor}", at=at + timedelta(minutes=11))
        ledger.catch_up()
        return {
            "analyst": ledger.api_keys.create("analyst", ["analyst"])[1],
            "auditor": ledger.api_keys.create("auditor", ["auditor"])[1],
        }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ManualClock, dict[str, str]]:
    path = tmp_path_factory.mktemp("console") / "chat.db"
    clock = ManualClock(START)
    keys = seed(f"sqlite:///{path}", clock)
    return f"sqlite:///{path}", clock, keys


@pytest.fixture(scope="module")
def service(store: tuple[str, ManualClock, dict[str, str]]) -> Iterator[str]:
    url, clock, _ = store
    with served(create_app(url, clock=clock, policy=POLICY)) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,2400",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=DRIVER)
    )
    yield driver
    driver.quit()


def screenshot(driver: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"console-{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    if target := os.environ.get("CHATLEDGER_CONSOLE_SCREENSHOTS"):
        shutil.copy(path, Path(target) / path.name)


def sign_in(driver: Any, base: str, key: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{base}/console/login")
    driver.find_element(By.NAME, "key").send_keys(key)
    driver.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(driver, 20).until(lambda d: "/login" not in d.current_url)


def figures(driver: Any, figure_id: str) -> dict[str, str]:
    rows = driver.find_elements(By.CSS_SELECTOR, f"#{figure_id} table tr")[1:]
    return {
        r.find_elements(By.TAG_NAME, "td")[0].get_attribute("textContent"): r.find_elements(
            By.TAG_NAME, "td"
        )[1].get_attribute("textContent")
        for r in rows
    }


AXES = """return Array.from(document.querySelectorAll('canvas[data-chart]')).map(c => {
  const ch = Chart.getChart(c);
  return ['x', 'y'].map(a => ({title: ch.scales[a].options.title.text,
    ticks: ch.scales[a].ticks.map(t => String(ch.scales[a].getLabelForValue(t.value)))}));
});"""


def test_analytics_charts_have_axes_and_the_apis_figures(
    browser: Any, service: str, store: tuple[str, ManualClock, dict[str, str]], tmp_path: Path
) -> None:
    url, clock, keys = store
    sign_in(browser, service, keys["analyst"])
    browser.get(f"{service}/console/")
    axes = browser.execute_script(AXES)
    assert len(axes) == 7
    for chart in axes:
        for axis in chart:
            assert axis["title"] and axis["ticks"] and all(t.strip() for t in axis["ticks"])
    with ChatLedger.open(url, clock=clock, policy=POLICY) as ledger:
        expected = ledger.analytics()
        curve = {
            m: ledger.resessionize(timedelta(minutes=m)).sessions
            for m in (5, 10, 15, 20, 30, 45, 60, 120)
        }
    assert expected.sessions == SESSIONS
    kpi = browser.find_element(By.CSS_SELECTOR, "[data-kpi='Sessions'] b").text
    assert kpi == str(expected.sessions)
    assert browser.find_element(By.CSS_SELECTOR, "[data-kpi='Returning visitors'] b").text == str(
        expected.returning_visitors
    )
    assert figures(browser, "per-day") == {
        d.isoformat(): str(n) for d, n in expected.sessions_per_day.items()
    }
    assert figures(browser, "end-reasons") == {k: str(n) for k, n in expected.end_reasons.items()}
    assert {"ended", "timed_out"} <= set(expected.end_reasons)  # "handoff" folds into ended (open)
    assert figures(browser, "channels") == {
        k: str(n) for k, n in expected.sessions_per_channel.items()
    }
    assert figures(browser, "timeouts") == {f"{m} min": str(n) for m, n in curve.items()}
    one_message = sum(1 for d in expected.durations_s if d <= 0)
    over_half_hour = sum(1 for d in expected.durations_s if d >= 1800)
    shown = figures(browser, "durations")
    assert shown["0 s"] == str(one_message) and shown["> 30 min"] == str(over_half_hour)
    assert sum(int(v) for v in shown.values()) == SESSIONS
    assert (
        f"As of log position {expected.position}"
        in browser.find_element(By.CLASS_NAME, "meta").text
    )
    screenshot(browser, tmp_path, "analytics")


def test_the_slider_replays_the_session_as_of_that_instant(
    browser: Any, service: str, store: tuple[str, ManualClock, dict[str, str]], tmp_path: Path
) -> None:
    url, clock, keys = store
    sign_in(browser, service, keys["analyst"])
    browser.get(f"{service}/console/sessions?user_id=user-v-0")
    screenshot(browser, tmp_path, "sessions")
    link = browser.find_elements(By.CSS_SELECTOR, "#sessions a")[-1]  # the oldest: session 0, ended
    sid = link.text
    link.click()
    slider = browser.find_element(By.ID, "as-of-slider")
    times = [
        datetime.fromisoformat(t)
        for t in __import__("json").loads(slider.get_attribute("data-times"))
    ]
    assert len(times) >= 4
    with ChatLedger.open(url, clock=clock, policy=POLICY) as ledger:
        for index in (1, 2, len(times) - 1):
            browser.execute_script(
                "const s = arguments[0]; s.value = arguments[1]; s.dispatchEvent(new Event('change'));",
                browser.find_element(By.ID, "as-of-slider"),
                index,
            )
            WebDriverWait(browser, 20).until(lambda d: "as_of=" in d.current_url)
            WebDriverWait(browser, 20).until(
                lambda d, i=index: d.find_element(By.ID, "as-of-slider").get_attribute("value") == str(i)
            )
            state = ledger.session(sid, as_of=times[index])
            shown = [
                m.get_attribute("textContent")
                for m in browser.find_elements(By.CSS_SELECTOR, "[data-message] div")
            ]
            assert shown == [m.text for m in state.messages]
            status = browser.find_element(By.CSS_SELECTOR, "#facts tr td").text
            assert status == state.status
            if index == 1:
                screenshot(browser, tmp_path, "replay")
    assert shown and status == "ended"


def test_scopes_an_analyst_cannot_open_the_audit_page(
    browser: Any, service: str, store: tuple[str, ManualClock, dict[str, str]], tmp_path: Path
) -> None:
    _, _, keys = store
    sign_in(browser, service, keys["analyst"])
    browser.get(f"{service}/console/audit")
    assert "Forbidden" in browser.find_element(By.TAG_NAME, "h1").text
    with httpx.Client(base_url=service) as http:
        assert http.get("/console/").status_code == 303  # no cookie: to the sign-in page
        assert http.post("/console/login", data={"key": "clk_x_y"}).status_code == 401
        signed = http.post("/console/login", data={"key": keys["analyst"]})
        assert signed.status_code == 303
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=28800" in cookie
        assert http.get("/console/audit").status_code == 403
        assert http.get("/console/").status_code == 200
    sign_in(browser, service, keys["auditor"])
    browser.get(f"{service}/console/audit")
    assert browser.find_element(By.ID, "verdict").text == "The log verifies: no break."
    browser.get(f"{service}/console/audit")  # the seals verified by the first check are trusted now
    said = browser.find_element(By.ID, "checked").text
    assert said.startswith("Incremental check at") and "chatledger audit verify" in said
    trusted = browser.find_element(By.XPATH, "//table[@id='verify']//th[.='trusted_seals']/../td").text
    assert int(trusted) > 0 and f"seals 1–{trusted} " in said
    screenshot(browser, tmp_path, "audit")
    browser.find_element(By.ID, "full-check").click()  # the full re-check, from the page
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.ID, "checked").text.startswith("Full check at")
    )
    assert browser.find_element(By.ID, "verdict").text == "The log verifies: no break."
    with httpx.Client(base_url=service, timeout=120) as http:  # a form posted from another site: refused
        assert http.post("/console/login", data={"key": keys["auditor"]}).status_code == 303
        assert http.post("/console/audit", headers={"origin": "https://evil.example"}).status_code == 403
        assert http.post("/console/audit").status_code == 403  # neither Origin nor Referer
        assert http.post("/console/audit", headers={"origin": service}).status_code == 200
    browser.get(f"{service}/console/")
    assert "Forbidden" in browser.find_element(By.TAG_NAME, "h1").text
