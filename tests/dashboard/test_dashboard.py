"""SPEC §13, the dashboard, in a real headless Chromium driven by Selenium against a real cluster.

One cluster (runner `a` with 4 cores, `b` with 2) and one browser serve the whole module. The
page is loaded once and then moved between its views through `location.hash`, as a user's
clicks do, so every test can also check that what it saw arrived live, without a reload.
Each test ends by checking the browser's console: the page's own scripts logged no error.

Screenshots of each view land in $HAKURIVER_SCREENSHOTS (default docs/screenshots/).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from support import LocalCluster, cluster_running, program, start_a_and_b, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("the dashboard's tests need chromium and chromedriver (Debian: apt-get install chromium "
                "chromium-driver)", allow_module_level=True)

pytestmark = pytest.mark.integration

SHOTS = Path(os.environ.get("HAKURIVER_SCREENSHOTS") or Path(__file__).resolve().parents[2] / "docs" / "screenshots")
DESKTOP = (1280, 900)
PHONE = (390, 844)
#: seconds: how long anything the host has committed may take to show on the page
LIVE = 10


# ---- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    with cluster_running(tmp_path_factory.mktemp("dashboard"), request) as c:
        start_a_and_b(c)
        yield c


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: Chromium refuses to start its sandbox as root; --disable-dev-shm-usage: a
    # container's small /dev/shm otherwise crashes its renderer
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # a driver given by path: Selenium Manager never goes looking on the network for another
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield browser
    browser.quit()


@pytest.fixture(autouse=True)
def quiet_console(driver: WebDriver, cluster: LocalCluster) -> Iterator[None]:
    """After each test: no SEVERE entry in the console, except the 401s the page asks for on purpose."""
    driver.get_log("browser")  # reading empties it: what earlier tests left is theirs
    yield
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and not expected_refusal(e, cluster.url)]
    assert not errors, f"the page logged errors: {errors}"


def expected_refusal(entry: dict[str, Any], url: str) -> bool:
    """Chromium logs every HTTP error reply as a SEVERE `network` entry, even one the script
    handles. Two are the login's design: GET /api/me answers 401 while no one is logged in (the
    page then shows its form), and POST /api/login answers 401 to a wrong token. Any other URL or
    status, and every message from the scripts themselves (source `javascript`/`console-api`), counts."""
    message = entry["message"]
    return (entry["source"] == "network" and "status of 401" in message
            and message.startswith((f"{url}/api/me ", f"{url}/api/login ")))


@pytest.fixture(scope="module")
def bob(cluster: LocalCluster) -> str:
    """A second user, not an admin: his token."""
    return add_user(cluster, "bob")


@pytest.fixture
def admin(driver: WebDriver, cluster: LocalCluster) -> WebDriver:
    """The browser on the dashboard, logged in as the first admin (whatever the test before did)."""
    driver.set_window_size(*DESKTOP)
    log_in(driver, cluster, cluster.token, admin_name(cluster))
    return driver


# ---- the cluster's side ----------------------------------------------------------------------
def add_user(cluster: LocalCluster, name: str) -> str:
    res = subprocess.run(program("host") + ["--config", str(cluster.config), "--add-user", name],
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def admin_name(cluster: LocalCluster) -> str:
    return cluster.query("SELECT name FROM users WHERE admin = 1 ORDER BY rowid LIMIT 1")[0]["name"]


def kill(cluster: LocalCluster, *ids: str) -> None:
    """Best effort: a test that failed halfway leaves no core busy for the next one."""
    for some_id in ids:
        cluster.client("--kill", some_id)


def wait_idle(cluster: LocalCluster) -> None:
    """No task waits or runs (what an earlier test started has finished), so core counts are ours."""
    def idle() -> bool:
        active = cluster.query("SELECT COUNT(*) AS n FROM tasks WHERE state IN ('pending', 'assigning', 'running')")
        return active[0]["n"] == 0
    wait_until(idle, 30, "the cluster to be idle")


# ---- the page's side -------------------------------------------------------------------------
def until(driver: WebDriver, cond: Callable[[WebDriver], Any], what: str, timeout: float = LIVE) -> Any:
    """The first truthy value of `cond`; fail naming `what` after `timeout` seconds. A live page
    re-renders while `cond` reads it: an element gone stale meanwhile means "ask again"."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05,
                             ignored_exceptions=(StaleElementReferenceException,)).until(cond)
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (page at {driver.current_url})") from None


def read(driver: WebDriver, get: Callable[[WebDriver], Any], what: str) -> Any:
    """What `get` reads from the page, read again if the page re-rendered under it (a live page
    may replace an element between finding it and reading it)."""
    return until(driver, lambda d: (get(d),), what)[0]


def by_id(driver: WebDriver, element_id: str) -> WebElement:
    return driver.find_element(By.ID, element_id)


def css(driver: WebDriver | WebElement, selector: str) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, selector)


def text_of(driver: WebDriver, element_id: str) -> str:
    """The element's whole text as the DOM holds it (Selenium's .text trims and skips hidden parts)."""
    return driver.execute_script("return document.getElementById(arguments[0]).textContent", element_id)


def shown(driver: WebDriver, element_id: str) -> bool:
    return by_id(driver, element_id).is_displayed()


def goto(driver: WebDriver, fragment: str, page: str) -> None:
    """Another view of the same page, as following one of its links does (no reload)."""
    driver.execute_script("location.hash = arguments[0]", fragment)
    until(driver, lambda d: shown(d, f"page-{page}"), f"the {page} page")


def load_id(driver: WebDriver) -> float:
    """When the document was loaded: unchanged as long as the page was never reloaded."""
    return driver.execute_script("return performance.timeOrigin")


def current_hash(driver: WebDriver) -> str:
    return driver.execute_script("return location.hash")


def screenshot(driver: WebDriver, name: str, whole_page: bool = False) -> None:
    """The window, or (whole_page) the page from top to bottom: the window stretched to its height."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    size = driver.get_window_size()
    if whole_page:
        frame = size["height"] - driver.execute_script("return innerHeight")  # the window's own bars
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(size["width"], height + frame)
    try:
        driver.save_screenshot(str(SHOTS / name))
    finally:
        driver.set_window_size(size["width"], size["height"])


def log_in(driver: WebDriver, cluster: LocalCluster, token: str, name: str) -> None:
    """Through the form, logging out first if someone else is logged in."""
    if not driver.current_url.startswith(cluster.url):
        driver.get(cluster.url + "/")
    until(driver, lambda d: shown(d, "page-login") or by_id(d, "whoami").text, "the login form or a session")
    if shown(driver, "topbar"):
        if by_id(driver, "whoami").text == name:
            return
        log_out(driver)
    by_id(driver, "login-token").send_keys(token)
    by_id(driver, "login-submit").click()
    until(driver, lambda d: shown(d, "topbar") and by_id(d, "whoami").text == name, f"{name} to be logged in")


def log_out(driver: WebDriver) -> None:
    by_id(driver, "logout").click()
    until(driver, lambda d: shown(d, "page-login") and not shown(d, "topbar"), "the login form after logging out")


def cells_of(driver: WebDriver, task_id: str) -> list[WebElement]:
    return css(driver, f'#nodes .core.busy[data-task="{task_id}"]')


def node_of_cell(cell: WebElement) -> str:
    return cell.find_element(By.XPATH, "ancestor::*[@data-node][1]").get_attribute("data-node")


def overflows(driver: WebDriver) -> int:
    """Pixels the page is wider than the window (0: nothing to scroll sideways)."""
    return driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")


# ---- the tests -------------------------------------------------------------------------------
def test_log_in_refuses_a_wrong_token_and_keeps_the_right_one_in_an_httponly_cookie(driver, cluster):
    driver.set_window_size(*DESKTOP)
    driver.delete_all_cookies()
    driver.get(cluster.url + "/")
    until(driver, lambda d: shown(d, "page-login"), "the login form")
    assert not shown(driver, "topbar")
    screenshot(driver, "dashboard-login.png")

    by_id(driver, "login-token").send_keys("not-a-token")
    by_id(driver, "login-submit").click()
    until(driver, lambda d: by_id(d, "login-error").text, "the login's error line")
    assert by_id(driver, "login-error").text == "the host does not know this token (wrong, or its user was removed)"
    assert shown(driver, "page-login") and not shown(driver, "topbar")
    assert not driver.get_cookies()

    field = by_id(driver, "login-token")
    field.clear()
    field.send_keys(cluster.token)
    by_id(driver, "login-submit").click()
    name = admin_name(cluster)
    until(driver, lambda d: shown(d, "page-cluster") and by_id(d, "whoami").text == name, "the cluster page")
    assert shown(driver, "admin-badge") and by_id(driver, "login-error").text == ""

    [cookie] = driver.get_cookies()
    assert cookie["value"] == cluster.token
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict", cookie
    # HttpOnly: the page's scripts (and any script injected into it) cannot read the token
    assert cluster.token not in driver.execute_script("return document.cookie")


def test_a_nodes_cores_fill_and_free_live_on_the_cluster_page(admin, cluster):
    driver = admin
    wait_idle(cluster)
    goto(driver, "#/cluster", "cluster")
    until(driver, lambda d: len(css(d, '[data-node="a"] .core')) == 4, "node a's 4 cores")
    until(driver, lambda d: by_id(d, "stat-cores-used").text == "0", "0 cores used")
    loaded = load_id(driver)
    # the moment, by the browser's clock, node a first shows 3 busy cores
    driver.execute_script("""
        window.hrBusyAt = null;
        new MutationObserver(() => {
          if (window.hrBusyAt === null && document.querySelectorAll('[data-node="a"] .core.busy').length === 3)
            window.hrBusyAt = Date.now() / 1000;
        }).observe(document.getElementById("nodes"), {subtree: true, attributes: true, childList: true});""")

    submitted = time.time()
    task_id = cluster.submit("--cores", "3", "--node", "a", "--", "sleep", "30")
    try:
        cells = until(driver, lambda d: len(cells_of(d, task_id)) == 3 and cells_of(d, task_id), "3 busy cores")
        assert {node_of_cell(c) for c in cells} == {"a"}
        assert len(css(driver, '[data-node="a"] .core.busy')) == 3
        until(driver, lambda d: by_id(d, "stat-cores-used").text == "3", "3 cores used")
        assert by_id(driver, "stat-cores-free").text == "3"
        started_at = cluster.wait_state(task_id, "running")["started_at"]
        busy_at = driver.execute_script("return window.hrBusyAt")
        print(f"\nlive latency: submit -> busy cells {busy_at - submitted:.3f} s, "
              f"started_at (DB) -> busy cells {busy_at - started_at:+.3f} s")
        screenshot(driver, "dashboard-cluster.png")
    finally:
        kill(cluster, task_id)
    until(driver, lambda d: not css(d, "#nodes .core.busy"), "every core free again")
    until(driver, lambda d: by_id(d, "stat-cores-used").text == "0", "0 cores used")
    assert load_id(driver) == loaded, "the page was reloaded"


def test_a_click_on_a_busy_core_opens_its_task_whose_log_follows(admin, cluster):
    driver = admin
    goto(driver, "#/cluster", "cluster")
    loaded = load_id(driver)
    task_id = cluster.submit("--name", "count-to-8", "--", "sh", "-c",
                             "for i in $(seq 1 8); do echo line-$i; sleep 0.5; done")
    try:
        cell = until(driver, lambda d: (cells_of(d, task_id) or [None])[0], "the task's core")
        cell.click()
        until(driver, lambda d: current_hash(d) == f"#/task/{task_id}", "the task's page")
        until(driver, lambda d: by_id(d, "task-state").get_attribute("data-state") == "running", "a running badge")
        until(driver, lambda d: "line-1" in text_of(d, "log-stdout"), "line-1")
        # the page shows the log while it is being written, not only once it is complete
        assert "line-8" not in text_of(driver, "log-stdout")
        until(driver, lambda d: "line-8" in text_of(d, "log-stdout"), "line-8")
        until(driver, lambda d: by_id(d, "task-state").get_attribute("data-state") == "completed", "a completed badge")
    finally:
        kill(cluster, task_id)
    assert text_of(driver, "log-stdout") == "".join(f"line-{i}\n" for i in range(1, 9)), "each line once, in order"
    assert by_id(driver, "task-title").text == "count-to-8"
    assert not shown(driver, "kill-task")
    assert load_id(driver) == loaded, "the page was reloaded"
    screenshot(driver, "dashboard-task.png", whole_page=True)


def test_the_kill_button_kills_a_running_task(admin, cluster):
    driver = admin
    task_id = cluster.submit("--name", "long-sleep", "--", "sleep", "120")
    try:
        cluster.wait_state(task_id, "running")
        goto(driver, "#/tasks", "tasks")
        # open it as a user does: a click on its row in the list
        row = until(driver, lambda d: (css(d, f'#task-table tr[data-task="{task_id}"]') or [None])[0], "its row")
        row.find_element(By.CSS_SELECTOR, "td.name").click()
        until(driver, lambda d: current_hash(d) == f"#/task/{task_id}", "the task's page")
        until(driver, lambda d: shown(d, "kill-task"), "the kill button")
        by_id(driver, "kill-task").click()
        until(driver, lambda d: shown(d, "confirm"), "the confirmation")
        assert "long-sleep" in by_id(driver, "confirm-text").text
        by_id(driver, "confirm-yes").click()
        assert cluster.wait_state(task_id, "killed", timeout=LIVE)["state"] == "killed"
    finally:
        kill(cluster, task_id)
    until(driver, lambda d: by_id(d, "task-state").get_attribute("data-state") == "killed", "a killed badge")
    until(driver, lambda d: not shown(d, "kill-task"), "the kill button to go")
    assert shown(driver, "task-message") and by_id(driver, "task-message").text


def test_a_batch_shows_its_progress_and_problems_and_retries_the_failed(admin, cluster):
    driver = admin
    res = cluster.client("--array", "1-4", "--wait", "--", "sh", "-c", "test {} -ne 2 && test {} -ne 3")
    assert res.returncode == 1, res.stderr  # not every task completed
    batch_id = res.stdout.splitlines()[0].strip()
    failed = cluster.query("SELECT * FROM tasks WHERE batch_id = ? AND state = 'failed'", batch_id)
    assert len(failed) == 2

    goto(driver, f"#/batch/{batch_id}", "batch")
    until(driver, lambda d: css(d, '#batch-counts li[data-state="failed"]'), "the batch's counts")
    counts = read(driver, lambda d: {li.get_attribute("data-state"): li.text.split()[-1]
                                     for li in css(d, "#batch-counts li[data-state]")}, "the batch's counts")
    assert counts == {"completed": "2", "failed": "2"}
    assert read(driver, lambda d: css(d, "#batch-counts li.total")[0].text, "the total") == "4 of 4 finished"
    segments = read(driver, lambda d: [(seg.get_attribute("data-state"), seg.value_of_css_property("width"))
                                       for seg in css(d, "#batch-bar .seg")], "the bar")
    assert [state for state, _ in segments] == ["completed", "failed"] and segments[0][1] == segments[1][1]
    problems = read(driver, lambda d: {row.get_attribute("data-task") for row in css(d, "#batch-problems tr[data-task]")},
                    "the problem rows")
    assert problems == {row["task_id"] for row in failed}
    assert shown(driver, "retry-failed") and shown(driver, "kill-batch")
    screenshot(driver, "dashboard-batch.png")

    by_id(driver, "retry-failed").click()
    until(driver, lambda d: shown(d, "confirm"), "the confirmation")
    by_id(driver, "confirm-yes").click()
    until(driver, lambda d: current_hash(d).startswith("#/batch/") and current_hash(d) != f"#/batch/{batch_id}",
          "the new batch's page")
    new_id = current_hash(driver).removeprefix("#/batch/")
    until(driver, lambda d: by_id(d, "batch-title").text == f"Batch {new_id}", "the new batch's title")
    again = cluster.query("SELECT * FROM tasks WHERE batch_id = ?", new_id)
    assert sorted((r["command"], r["args"]) for r in again) == sorted((r["command"], r["args"]) for r in failed)
    assert {r["owner"] for r in again} == {failed[0]["owner"]} == {admin_name(cluster)}


def test_another_user_sees_no_kill_or_retry_buttons_on_the_admins_work(admin, cluster, bob):
    driver = admin
    task_id = cluster.submit("--", "sleep", "120")
    batch_id = cluster.submit("--array", "1-2", "--", "sleep", "120")
    try:
        cluster.wait_state(task_id, "running")
        log_in(driver, cluster, bob, "bob")
        assert not shown(driver, "admin-badge")

        goto(driver, f"#/task/{task_id}", "task")
        until(driver, lambda d: by_id(d, "task-state").get_attribute("data-state") == "running", "a running badge")
        owner = read(driver, lambda d: css(d, '#task-record [data-field="owner"]')[0].text, "the task's owner")
        assert owner == admin_name(cluster)
        assert not shown(driver, "kill-task")

        goto(driver, f"#/batch/{batch_id}", "batch")
        # the buttons are decided once both the batch and its task list have arrived
        until(driver, lambda d: len(css(d, "#batch-tasks tr[data-task]")) == 2, "the batch's tasks")
        assert not shown(driver, "kill-batch") and not shown(driver, "retry-failed")
    finally:
        kill(cluster, task_id, batch_id)


def test_another_user_does_not_see_the_admins_log(admin, cluster, bob):
    driver = admin
    task_id = cluster.submit("--wait", "--", "echo", "the-admins-secret")
    log_in(driver, cluster, bob, "bob")
    goto(driver, f"#/task/{task_id}", "task")
    until(driver, lambda d: by_id(d, "task-state").get_attribute("data-state") == "completed", "a completed badge")
    # the record is everyone's to read; the log, as GET .../logs, only the owner's or an admin's
    until(driver, lambda d: "may read this log" in text_of(d, "log-stdout"), "the note in place of the log")
    assert "the-admins-secret" not in text_of(driver, "log-stdout")


def test_the_tasks_page_filters_by_state_newest_first(admin, cluster):
    driver = admin
    for _ in range(3):
        cluster.client("--wait", "--", "sh", "-c", "exit 3")
    goto(driver, "#/tasks", "tasks")
    until(driver, lambda d: len(css(d, "#task-table tr[data-task]")) >= 3, "the task list")
    screenshot(driver, "dashboard-tasks.png")

    css(driver, '#task-filters input[name="state"][value="failed"]')[0].click()
    until(driver, lambda d: current_hash(d) == "#/tasks?state=failed", "the filter in the address")

    def expected() -> list[str]:
        return [r["task_id"] for r in cluster.query(
            "SELECT task_id FROM tasks WHERE state = 'failed' ORDER BY rowid DESC LIMIT 50")]

    def listed(d: WebDriver) -> list[str]:  # read in one go: the live page may re-render between two reads
        return d.execute_script("return Array.from(document.querySelectorAll('#task-table tr[data-task]'), "
                                "r => r.getAttribute('data-task'))")

    until(driver, lambda d: listed(d) == expected(), "exactly the failed tasks, newest first")
    states = set(driver.execute_script("return Array.from(document.querySelectorAll('#task-table tr[data-task] .badge'), "
                                       "b => b.getAttribute('data-state'))"))
    assert states == {"failed"}
    submitted = [cluster.task(t)["submitted_at"] for t in listed(driver)]
    assert submitted == sorted(submitted, reverse=True)

    # a task that fails now joins the top of the filtered list, live
    newest = cluster.client("--wait", "--", "sh", "-c", "exit 4").stdout.split()[0]
    until(driver, lambda d: listed(d)[:1] == [newest], "the new failure on top")
    assert listed(driver) == expected()


def test_phone_width_scrolls_nothing_sideways(admin, cluster):
    driver = admin
    # a running task whose log has a line far wider than a phone
    task_id = cluster.submit("--name", "wide-log", "--", "sh", "-c", "printf 'x%.0s' $(seq 1 400); echo; sleep 60")
    try:
        driver.set_window_size(*PHONE)
        until(driver, lambda d: d.execute_script("return innerWidth") <= PHONE[0], "the phone's width")
        goto(driver, "#/cluster", "cluster")
        until(driver, lambda d: cells_of(d, task_id), "the task's core")
        assert overflows(driver) <= 1
        screenshot(driver, "phone-cluster.png", whole_page=True)

        goto(driver, "#/tasks", "tasks")
        until(driver, lambda d: css(d, f'#task-table tr[data-task="{task_id}"]'), "the task list")
        assert overflows(driver) <= 1

        goto(driver, f"#/task/{task_id}", "task")
        until(driver, lambda d: "x" * 400 in text_of(d, "log-stdout"), "the wide log line")
        until(driver, lambda d: shown(d, "kill-task"), "the kill button")
        assert overflows(driver) <= 1
        # the log, in view: its long line scrolls inside its own pane
        driver.execute_script("document.getElementById('log-stdout').scrollIntoView({block: 'center'})")
        screenshot(driver, "phone-task.png")
    finally:
        driver.set_window_size(*DESKTOP)
        kill(cluster, task_id)


def test_a_node_whose_runner_stops_shows_as_leaving(admin, cluster):
    """Last in this file: it leaves a node behind that goes offline."""
    driver = admin
    goto(driver, "#/cluster", "cluster")
    cluster.start_runner("leaver", 1)
    cluster.wait_online("leaver")
    badge = '[data-node="leaver"] [data-field="state"]'
    until(driver, lambda d: [b.text for b in css(d, badge)] == ["online"], "the new node online")
    cluster.runners["leaver"].stop()  # a clean stop: the runner tells the host it leaves
    until(driver, lambda d: [b.text for b in css(d, badge)] == ["leaving"], "the node leaving")
    assert "node-leaving" in read(driver, lambda d: css(d, badge)[0].get_attribute("class"), "the badge's class")
