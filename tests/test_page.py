"""The web page in a real browser (headless Chromium through Selenium): upload, results, errors, the model
card, the report link, and no request leaving the app. Skips cleanly when Chromium is absent."""

import json
import shutil
import time

import httpx
import numpy as np
import pytest

from helpers import gradient_image, run_script, start_service, stop_service, write_jpeg

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium/chromedriver absent"),
]


@pytest.fixture(scope="module")
def served(trained_run, tmp_path_factory):
    """The trained run copied, evaluated (so a report sits beside the checkpoint), and served."""
    run = tmp_path_factory.mktemp("page") / "run"
    shutil.copytree(trained_run[0], run)
    best = run / trained_run[1].name
    r = run_script("src/training/evaluate.py", "--checkpoint", best, "--bootstrap", 50, "--workers", 0)
    assert r.returncode == 0, r.stderr
    without_checks(best)  # the uploads here are smooth gradients: blurred, and unlike training images
    proc, url = start_service(best)
    yield url, run
    stop_service(proc)


def without_checks(checkpoint):
    from src.core.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(checkpoint)
    ckpt.pop("quality_gate", None)
    ckpt.pop("familiarity", None)
    save_checkpoint(ckpt, checkpoint)


def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--window-size=1100,1400",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def wait_for(predicate, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the page")


def requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_upload_results_errors_model_card_and_report(served, tmp_path):
    from selenium.webdriver.common.by import By

    url, run = served
    good = write_jpeg(tmp_path / "lesion.jpg", gradient_image(200, 260))
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not an image")
    driver = browser()
    try:
        driver.get(url + "/")
        assert "Research software, not a diagnosis" in driver.find_element(By.TAG_NAME, "body").text
        card = wait_for(
            lambda: (
                "resnet18" in driver.find_element(By.ID, "model").text and driver.find_element(By.ID, "model")
            )
        )
        assert "Validation ROC AUC" in card.text and "sensitivity >= 0.90" in card.text
        driver.save_screenshot(str(tmp_path / "1-model-card.png"))

        driver.find_element(By.ID, "files").send_keys(f"{good}\n{bad}")  # one batch, one bad file
        results = lambda: driver.find_elements(By.CSS_SELECTOR, "#results section")  # noqa: E731
        wait_for(
            lambda: len(results()) == 2 and "analysing" not in driver.find_element(By.ID, "results").text
        )
        texts = {s.find_element(By.TAG_NAME, "strong").text: s for s in results()}
        error = texts["notes.jpg"].find_element(By.CSS_SELECTOR, ".status.error")
        assert "Could not analyse this file: not a readable image (JPEG or PNG expected)" in error.text
        ok = texts["lesion.jpg"]
        assert "melanoma risk" in ok.text and "threshold" in ok.text
        overlay = wait_for(lambda: ok.find_elements(By.CSS_SELECTOR, "img.overlay"))[0]
        wait_for(lambda: driver.execute_script("return arguments[0].naturalWidth", overlay) > 0)
        assert overlay.get_attribute("alt").startswith("Grad-CAM")
        driver.save_screenshot(str(tmp_path / "2-results.png"))

        link = driver.find_element(By.ID, "report-link")
        assert link.get_attribute("href") == url + "/report"
        assert httpx.get(url + "/report/roc.png").headers["content-type"] == "image/png"
        link.click()  # the report as a page: rendered tables and its plots, no Markdown syntax
        wait_for(lambda: driver.find_elements(By.TAG_NAME, "h1"))
        assert driver.find_element(By.TAG_NAME, "h1").text.startswith("Evaluation report")
        assert len(driver.find_elements(By.TAG_NAME, "table")) >= 3
        plots = driver.find_elements(By.TAG_NAME, "img")
        assert plots and all(driver.execute_script("return arguments[0].naturalWidth", p) > 0 for p in plots)
        assert "|---|" not in driver.page_source and "![" not in driver.page_source
        driver.back()

        outside = [u for u in requested_urls(driver) if not u.startswith((url, "data:", "blob:"))]
        assert outside == [], outside
        # The page runs under its content-security policy (inline script and style pinned by hash).
        refused = [
            e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]
        ]
        assert refused == [], refused
        assert "system-ui" in driver.execute_script("return getComputedStyle(document.body).fontFamily")
    finally:
        driver.quit()


@pytest.mark.parametrize(
    "path",
    [
        "%2e%2e/last.pth",
        "..%2flast.pth",
        "%2fetc%2fpasswd",
        "//etc/passwd",
        "../split.csv",
        "report.json/../../last.pth",
    ],
)
def test_the_report_route_serves_nothing_outside_the_checkpoints_eval_folder(served, path):
    url, _ = served
    r = httpx.get(f"{url}/report/{path}")
    assert r.status_code == 404 and "root:" not in r.text


def test_the_page_is_small_and_self_contained(served):
    url, _ = served
    html = httpx.get(url + "/").text
    assert len(html.encode()) < 100_000 and "http://" not in html and "https://" not in html


def test_patient_fields_and_triage_ranking(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url, _ = served
    files = [write_jpeg(tmp_path / f"lesion{i}.jpg", gradient_image(120 + 40 * i, 200)) for i in range(3)]
    driver = browser()
    try:
        driver.get(url + "/")
        assert driver.find_element(By.ID, "triage").get_attribute("disabled")  # needs two images
        driver.find_element(By.ID, "age").send_keys("55")
        Select(driver.find_element(By.ID, "sex")).select_by_visible_text("female")
        driver.find_element(By.ID, "files").send_keys("\n".join(map(str, files)))
        wait_for(
            lambda: (
                "analysing" not in driver.find_element(By.ID, "results").text
                and len(driver.find_elements(By.CSS_SELECTOR, "#results .risk")) == 3
            )
        )
        driver.find_elements(By.CSS_SELECTOR, "#results .site input")[0].send_keys("posterior torso")
        driver.find_element(By.ID, "triage").click()
        items = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#ranked li"))
        assert len(items) == 3 and all(
            "risk" in i.text and "among this patient's lesions" in i.text for i in items
        )
        assert "stands out most" in driver.find_element(By.ID, "ranked").text
        assert "Ranked by the image model alone" in driver.find_element(By.ID, "ranked").text
        driver.save_screenshot(str(tmp_path / "3-triage.png"))

        age = driver.find_element(By.ID, "age")
        age.clear()
        age.send_keys("500")
        driver.find_element(By.ID, "triage").click()
        alert = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#ranked li.error"))[0]
        assert alert.get_attribute("role") == "alert" and "age must be between 0 and 120" in alert.text
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def served_with_context(trained_run, context_model):
    proc, url = start_service(trained_run[1], CONTEXT_MODEL=str(context_model / "fused.json"))
    yield url
    stop_service(proc)


def card_answers(driver) -> dict:
    """file name -> the decision line of its card."""
    from selenium.webdriver.common.by import By

    return {
        s.find_element(By.TAG_NAME, "strong").text: s.find_element(By.CSS_SELECTOR, ".label").text
        for s in driver.find_elements(By.CSS_SELECTOR, "#results section")
    }


def test_with_a_context_stage_every_card_and_the_ranked_list_give_the_same_answer(
    served_with_context, tmp_path
):
    from selenium.webdriver.common.by import By

    url = served_with_context
    files = [write_jpeg(tmp_path / f"mole{i}.jpg", gradient_image(100 + 30 * i, 180)) for i in range(3)]
    threshold = httpx.get(url + "/model").json()["context_stage"]["threshold"]
    driver = browser()
    try:
        driver.get(url + "/")
        wait_for(lambda: "Context stage" in driver.find_element(By.ID, "model").text)
        assert f"threshold {threshold:.4f}" in driver.find_element(By.ID, "model").text
        driver.find_element(By.ID, "files").send_keys("\n".join(map(str, files)))
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#results .label")) == 3)
        for line in card_answers(driver).values():  # each lesion alone: the context stage's threshold
            assert f"threshold {threshold:.4f}" in line and "this lesion alone" in line
        assert "image model alone" in driver.find_element(By.ID, "results").text
        notes = driver.find_elements(By.CSS_SELECTOR, "#results .context-note")  # one lesion: too few
        assert len(notes) == 3 and all("1 lesion of this patient" in n.text for n in notes)
        driver.find_element(By.ID, "triage").click()
        items = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#ranked li"))
        wait_for(lambda: all("other lesions" in a for a in card_answers(driver).values()))
        cards = card_answers(driver)
        for item in items:
            name = item.text.split(":")[0]
            decision = "above threshold" if "above threshold" in item.text else "below threshold"
            assert f"{decision} {threshold:.4f}" in item.text and f"{decision} {threshold:.4f}" in cards[name]
            assert item.get_attribute("class") == (
                "positive" if decision == "above threshold" else "negative"
            )
            assert "Note: 3 lesions of this patient" in item.text
        driver.save_screenshot(str(tmp_path / "context.png"))
    finally:
        driver.quit()


def test_failed_and_removed_uploads_leave_the_patient_and_the_page_fits_a_phone(served, tmp_path):
    from selenium.webdriver.common.by import By

    url, _ = served
    good = [
        write_jpeg(tmp_path / f"a-very-long-file-name-{'x' * 60}-{i}.jpg", gradient_image()) for i in range(2)
    ]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    driver = browser()
    try:
        driver.set_window_size(420, 900)
        driver.get(url + "/")
        driver.find_element(By.ID, "files").send_keys(f"{good[0]}\n{bad}")
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#results .status.error"))
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#results .label")) == 1)
        assert driver.find_element(By.ID, "triage").get_attribute("disabled")  # one usable image only
        driver.find_element(By.ID, "files").send_keys(str(good[1]))
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#results .label")) == 2)
        driver.find_element(By.ID, "triage").click()
        items = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#ranked li"))
        assert len(items) == 2 and "broken.jpg" not in driver.find_element(By.ID, "ranked").text
        width = "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        scroll, client = driver.execute_script(width)
        assert scroll <= client, f"sideways scroll at 420 px: {scroll} > {client}"
        driver.find_elements(By.CSS_SELECTOR, "#results button.remove")[0].click()
        assert driver.find_element(By.ID, "triage").get_attribute("disabled")
        driver.find_element(By.ID, "reset").click()
        assert driver.find_elements(By.CSS_SELECTOR, "#results section") == []
    finally:
        driver.quit()


def test_an_image_the_gate_cannot_assess_gets_its_reason_and_never_a_risk(trained_run, demo_dir, tmp_path):
    """With the checks evaluate.py fits: a blank upload is 'cannot assess: nearly uniform', random
    colour blocks (sharp, exposed, colourful: the quality rules pass them) 'cannot assess: unlike
    training images', on the card and in the ranked list, in neither risk colour; a demo lesion
    gets its risk."""
    from selenium.webdriver.common.by import By

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    best = run / trained_run[1].name
    r = run_script("src/training/evaluate.py", "--checkpoint", best, "--bootstrap", 20, "--workers", 0)
    assert r.returncode == 0, r.stderr
    blank = write_jpeg(tmp_path / "blank.jpg", np.full((300, 300, 3), 128, np.uint8))
    blocks = np.random.default_rng(0).integers(0, 256, (6, 6, 3), np.uint8)  # coarse: survives a 32 px decode
    noise = write_jpeg(tmp_path / "noise.jpg", np.kron(blocks, np.ones((50, 50, 1), np.uint8)))
    lesion = tmp_path / "lesion.jpg"
    shutil.copy(sorted(demo_dir.glob("*.jpg"))[0], lesion)
    proc, url = start_service(best)
    driver = browser()
    try:
        answer = httpx.post(url + "/predict", files={"file": blank.read_bytes()}, timeout=60).json()
        assert answer["assessable"] is False and answer["reason"] == "nearly uniform"
        assert answer["decision"] == "refer"  # the probability is kept, the decision is a person's
        card = httpx.get(url + "/model").json()
        assert "unlike training images (feature distance)" in card["checks"] and "refer" in card["refer_rule"]
        driver.get(url + "/")
        driver.find_element(By.ID, "files").send_keys(f"{blank}\n{noise}\n{lesion}")
        sections = lambda: driver.find_elements(By.CSS_SELECTOR, "#results section")  # noqa: E731
        wait_for(
            lambda: (
                len(sections()) == 3
                and len(driver.find_elements(By.CSS_SELECTOR, "#results .status span")) >= 3
            )
        )
        cards = {s.find_element(By.TAG_NAME, "strong").text: s for s in sections()}
        refused = cards["blank.jpg"]
        assert refused.find_element(By.CSS_SELECTOR, ".cannot").text == "cannot assess: nearly uniform"
        assert not refused.find_elements(By.CSS_SELECTOR, ".risk, .positive, .negative")
        assert cards["noise.jpg"].find_element(By.CSS_SELECTOR, ".cannot").text == (
            "cannot assess: unlike training images"
        )
        assert not cards["noise.jpg"].find_elements(By.CSS_SELECTOR, ".risk, .positive, .negative")
        assert "melanoma risk" in cards["lesion.jpg"].text
        driver.find_element(By.ID, "triage").click()
        items = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#ranked li"))
        blank_item = next(i for i in items if i.text.startswith("blank.jpg"))
        assert (
            blank_item.text == "blank.jpg: cannot assess: nearly uniform"
            and blank_item.get_attribute("class") == "cannot"
        )
    finally:
        driver.quit()
        stop_service(proc)
