"""Regenerate the page screenshots of the README and docs/deployment.md from the current demo.

    python src/training/train.py --demo                                   # checkpoints/demo/best.pth
    python src/training/oof.py --demo --folds 3 --out checkpoints/demo-oof
    python src/training/context.py --metadata data/demo/metadata.csv --oof checkpoints/demo-oof/oof.csv \\
        --out checkpoints/demo-context
    python docs/screenshots.py                       # -> docs/web-page.png, docs/triage-page.png

Serves the demo checkpoint (evaluated first if it has no report; fold 0 too), opens the page in headless
Chromium (Selenium), uploads two lesions of one validation patient and saves docs/web-page.png;
then serves fold 0 of the two-stage demo with its context stage, uploads all of one validation
patient's lesions with their age, sex and sites, ranks them and saves docs/triage-page.png. All
of it is SYNTHETIC demo data, and the pictures say so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"


def serve(model: Path, port: int, context: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "MODEL_PATH": str(model), **({"CONTEXT_MODEL": str(context)} if context else {})}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "src/inference/serve.py"), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"error: the service on {model} did not start")


def browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(flag)
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium:  # the system's browser and driver; else Selenium looks for its own
        options.binary_location = chromium
    return webdriver.Chrome(service=Service(driver) if driver else None, options=options)


def validation_patient(split_csv: Path, lesions: int) -> pd.DataFrame:
    """The first validation patient with `lesions` images, exactly one of them melanoma."""
    split = pd.read_csv(split_csv)
    meta = pd.read_csv(DEMO / "metadata.csv").merge(split[["image_name", "split"]], on="image_name")
    val = meta[meta["split"] == "val"]
    counts = val.groupby("patient_id")["target"].agg(["count", "sum"])
    chosen = counts[(counts["count"] == lesions) & (counts["sum"] == 1)].index
    if chosen.empty:
        raise SystemExit(f"error: no validation patient with {lesions} lesions and one melanoma")
    return val[val["patient_id"] == chosen[0]].sort_values("image_name")


def wait(predicate, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise SystemExit("error: the page did not finish in time")


def shoot(url: str, rows: pd.DataFrame, out: Path, rank: bool) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser(1100, 1500 if rank else 1450)
    try:
        driver.get(url + "/")
        wait(lambda: "Architecture" in driver.find_element(By.ID, "model").text)
        if rank:
            driver.find_element(By.ID, "age").send_keys(str(int(rows["age_approx"].iloc[0])))
            Select(driver.find_element(By.ID, "sex")).select_by_visible_text(rows["sex"].iloc[0])
        paths = [str(DEMO / f"{n}.jpg") for n in rows["image_name"]]
        driver.find_element(By.ID, "files").send_keys("\n".join(paths))
        wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#results .label")) == len(paths))
        wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, "img.overlay")) == len(paths))
        if rank:
            sites = driver.find_elements(By.CSS_SELECTOR, "#results .site input")[::-1]  # newest card first
            for box, site in zip(sites, rows["anatom_site_general_challenge"].fillna(""), strict=True):
                box.send_keys(site)
            driver.find_element(By.ID, "triage").click()
            wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#ranked li"))
            wait(
                lambda: all(
                    "other lesions" in e.text for e in driver.find_elements(By.CSS_SELECTOR, ".label")
                )
            )
        driver.save_screenshot(str(out))
        print(f"wrote {out}")
    finally:
        driver.quit()


def evaluated(checkpoint: Path) -> None:
    """Evaluate the checkpoint on its run's validation split unless done: the page then shows the
    fitted threshold and calibration, and the model card its report."""
    if not (checkpoint.parent / "eval" / "report.json").is_file():
        command = [sys.executable, str(ROOT / "src/training/evaluate.py"), "--checkpoint", str(checkpoint)]
        subprocess.run(command, check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Regenerate docs/web-page.png and docs/triage-page.png.")
    ap.add_argument("--checkpoint", default="checkpoints/demo/best.pth")
    ap.add_argument("--fold-checkpoint", default="checkpoints/demo-oof/fold0/best.pth")
    ap.add_argument("--context", default="checkpoints/demo-context/context_model.json")
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args(argv)
    ckpt = ROOT / args.checkpoint
    evaluated(ckpt)
    proc = serve(ckpt, args.port)
    try:
        shoot(
            f"http://127.0.0.1:{args.port}",
            validation_patient(ckpt.parent / "split.csv", 5).sort_values("target").tail(2),
            ROOT / "docs" / "web-page.png",
            rank=False,
        )
    finally:
        proc.terminate()
    fold = ROOT / args.fold_checkpoint
    if not (fold.is_file() and (ROOT / args.context).is_file()):
        print("note: no two-stage demo found; docs/triage-page.png was left as it is")
        return 0
    evaluated(fold)
    proc = serve(fold, args.port + 1, ROOT / args.context)
    try:
        shoot(
            f"http://127.0.0.1:{args.port + 1}",
            validation_patient(fold.parent / "split.csv", 5),
            ROOT / "docs" / "triage-page.png",
            rank=True,
        )
    finally:
        proc.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
