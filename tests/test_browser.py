"""The report and the MLflow UI in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`,
installed by `make test` when missing) driven by Selenium. Screenshots go to results/screenshots/."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from bench import tracking
from bench.config import Published
from bench.report import files as report_files
from tests.components import free_port, wait_healthy
from tests.conftest import REPO, wait_until

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS = REPO / "results" / "screenshots"
HEADLINE = "table.leaderboard[data-table=headline]"


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.fail(
            f"browser tests need {', '.join(missing)}: run `make test` (it installs chromium) or "
            "`apt-get install chromium chromium-driver`"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={profile}",
        "--window-size=1500,1100",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _body_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def test_report_html_rows_figures_and_sorting(quick_run, browser, tmp_path):
    from selenium.webdriver.common.by import By

    published = Published(
        dataset="digits", model="a paper's GAN", metric="fid", value=0.01, std=0.002, encoder="domain",
        protocol="its own", citation="Someone et al. 2099",
    )  # fmt: skip
    paths = report_files.write_report(quick_run["uri"], "quick", tmp_path / "report", published=(published,))
    page = paths["html"]
    browser.get(page.as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, HEADLINE + " tbody tr")
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, HEADLINE + " th")]
    assert headers[:4] == ["rank", "group", "model", "n"], headers
    model_col = 2
    labels = [r.find_elements(By.TAG_NAME, "td")[model_col].text for r in rows]
    real, published = "real data (held-out split, same N: the floor)", "published: a paper's GAN [1]"
    assert labels in ([real, "gan-mlp", "vae-mlp", published], [real, "vae-mlp", "gan-mlp", published])
    # every figure is embedded and decoded by the browser; nothing was fetched from anywhere
    images = browser.find_elements(By.CSS_SELECTOR, "figure img")
    assert len(images) == 6  # fid curves, samples, nearest training images, probability of improvement, likelihood, AIS
    assert all(browser.execute_script("return arguments[0].naturalWidth", img) > 300 for img in images)
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(url.startswith(("data:", "file:")) for url in fetched), fetched
    _fits_and_sticks(browser)
    browser.save_screenshot(str(SHOTS / "report.png"))

    fid_col = next(i for i, th in enumerate(browser.find_elements(By.CSS_SELECTOR, HEADLINE + " th"))
                   if th.get_attribute("data-metric") == "fid")  # fmt: skip
    header = browser.find_elements(By.CSS_SELECTOR, HEADLINE + " th")[fid_col]

    def column():
        rows = browser.find_elements(By.CSS_SELECTOR, HEADLINE + " tbody tr")
        return [(r.get_attribute("class"), r.find_elements(By.TAG_NAME, "td")[fid_col].get_attribute("data-value"))
                for r in rows]  # fmt: skip

    for direction, ordered in (("ascending", sorted), ("descending", lambda v: sorted(v, reverse=True))):
        header.click()
        assert header.get_attribute("aria-sort") == direction
        values = column()
        assert values[0][0] == "real" and values[-1][0] == "published"  # references stay where they are
        models = [float(v) for kind, v in values if kind == "model"]
        assert len(models) == 2 and models == ordered(models), (direction, values)
    browser.find_elements(By.CSS_SELECTOR, HEADLINE + " th")[model_col].click()  # text column
    names = [r.find_elements(By.TAG_NAME, "td")[model_col].text
             for r in browser.find_elements(By.CSS_SELECTOR, HEADLINE + " tbody tr.model")]  # fmt: skip
    assert names == ["gan-mlp", "vae-mlp"]
    browser.save_screenshot(str(SHOTS / "report-sorted.png"))
    for width, name in ((1400, "report-1400px.png"), (400, "report-400px.png")):
        _full_page(browser, width, SHOTS / name)
    browser.set_window_size(1500, 1100)


def _fits_and_sticks(browser) -> None:
    """At 1,400 px the headline table fits without scrolling; every table's header and its rank, group and model
    cells are sticky, and the page has an index of sections and tables."""
    from selenium.webdriver.common.by import By

    browser.set_window_size(1400, 1000)
    wrap = browser.find_element(By.CSS_SELECTOR, "table.leaderboard[data-table=headline]").find_element(By.XPATH, "..")
    scroll, client = browser.execute_script("return [arguments[0].scrollWidth, arguments[0].clientWidth]", wrap)
    assert scroll <= client, (scroll, client)
    style = "return getComputedStyle(arguments[0]).position"
    for th in browser.find_elements(By.CSS_SELECTOR, "table.leaderboard th"):
        assert browser.execute_script(style, th) == "sticky"
    for td in browser.find_elements(By.CSS_SELECTOR, "table.leaderboard td.label"):
        assert browser.execute_script(style, td) == "sticky"
    links = [a.get_attribute("href").split("#")[1] for a in browser.find_elements(By.CSS_SELECTOR, "nav a")]
    assert links and all(browser.find_elements(By.ID, anchor) for anchor in links)
    assert browser.find_elements(By.CSS_SELECTOR, "details.note summary")  # notes folded a line each


def _full_page(browser, width: int, path: Path) -> None:
    browser.set_window_size(width, 1000)
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(width, min(height + 120, 6000))
    browser.save_screenshot(str(path))


def test_bench_ui_shows_the_suite_runs(quick_run, browser):
    from selenium.webdriver.common.by import By

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = tracking.serve_ui(quick_run["uri"], "127.0.0.1", port)
    try:
        wait_healthy(proc, base)
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=quick") as r:
            experiment = json.load(r)["experiment"]
        # genbench tags the experiment so MLflow 3's UI opens it on its training-runs table
        assert {t["key"]: t["value"] for t in experiment["tags"]}["mlflow.experimentKind"] == "custom_model_development"
        browser.get(f"{base}/#/experiments/{experiment['experiment_id']}/runs")
        wait_until(lambda: "quick-" in _body_text(browser), 60, "the parent run in the runs table")
        expanders = browser.find_elements(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']")
        assert expanders, "no expandable parent run in the table"
        for button in expanders:
            button.click()  # child runs are nested under the suite's parent run
        names = ["gan-mlp/digits/seed0", "gan-mlp/digits/seed1", "vae-mlp/digits/seed0", "vae-mlp/digits/seed1"]
        wait_until(lambda: all(n in _body_text(browser) for n in names), 30, "the four child runs")
        assert "real-data/digits" in _body_text(browser)
        browser.save_screenshot(str(SHOTS / "mlflow-ui-runs.png"))
        # the Models tab: every cell's final and best model (MLflow 3 LoggedModels), with their source run and metrics
        browser.get(f"{base}/#/experiments/{experiment['experiment_id']}/models")
        shown = ("final", "best", "Ready", "vae-mlp/digits/seed1", "gan-mlp/digits/seed0")
        wait_until(lambda: all(s in _body_text(browser) for s in shown), 60, "the logged models and their source runs")
        browser.save_screenshot(str(SHOTS / "mlflow-ui-models.png"))
    finally:
        tracking.stop_ui(proc)
    assert proc.poll() is not None


def test_a_resumed_cell_is_one_run_with_continuous_curves_in_the_ui(killed_and_resumed, browser):
    """Issue 15's acceptance, as a user would look: SIGKILL a quick-suite cell mid-training, rerun (the session's
    `killed_and_resumed`), open the run in the MLflow UI. One run for the cell, FINISHED, whose periodic/fid chart
    covers every evaluation step from the first (the API says which steps; the screenshot shows the chart) and whose
    images sit at every sample step."""
    import mlflow
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    assert killed_and_resumed["returncode"] == 0, killed_and_resumed["out"]
    uri = tracking.default_uri(killed_and_resumed["results"])
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("quick")
    (cell,) = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("bench.model") == "gan-mlp"]
    assert cell.info.status == "FINISHED" and cell.data.tags["bench.resumes"] == "1"
    assert sorted({m.step for m in client.get_metric_history(cell.info.run_id, "periodic/fid")}) == [100, 200, 300]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ui = tracking.serve_ui(uri, "127.0.0.1", port)
    try:
        wait_healthy(ui, base)
        browser.get(f"{base}/#/experiments/{experiment.experiment_id}/runs/{cell.info.run_id}/model-metrics")
        wait_until(lambda: "gan-mlp/digits/seed0" in _body_text(browser), 60, "the run page")
        search = browser.find_element(By.CSS_SELECTOR, "input[placeholder*='Search metric']")
        search.send_keys("periodic")
        wait_until(lambda: "train_s" in _body_text(browser), 30, "the periodic charts")
        browser.save_screenshot(str(SHOTS / "mlflow-ui-resumed-run-periodic.png"))
        search.send_keys(Keys.CONTROL, "a")
        search.send_keys("samples")
        wait_until(lambda: "samples" in _body_text(browser), 30, "the sample images")
        browser.save_screenshot(str(SHOTS / "mlflow-ui-resumed-run-samples.png"))
    finally:
        tracking.stop_ui(ui)
