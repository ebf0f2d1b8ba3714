"""Screenshots of each page of the web console, for a person to look at (not committed).

    pgrag up --api-port 8080
    pgrag ingest examples/corpus --collection kb --create
    python bench/console_screenshots.py --url http://127.0.0.1:8080 --collection kb

It signs in with the key in PGRAG_API_KEY or `.pgrag/api-key` (the admin key that the first
`pgrag up --api-port` saved), drives Debian's Chromium through every page (a question asked,
a search made, a point of the map clicked) and writes one PNG per page to
bench/results/console/ (or --out).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from common import RESULTS
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests import browser
from tests.conftest import QUESTIONS


def api_key() -> str:
    if os.environ.get("PGRAG_API_KEY"):
        return os.environ["PGRAG_API_KEY"]
    from pgrag.runtime.settings import get_settings

    return (get_settings().state_dir / "api-key").read_text().strip()


def shoot(driver: WebDriver, out: Path, name: str) -> None:
    time.sleep(0.5)  # let the last swap paint
    path = out / f"{name}.png"
    driver.save_screenshot(str(path))
    print(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the API")
    parser.add_argument("--collection", default="kb")
    parser.add_argument("--out", type=Path, default=RESULTS / "console")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    console = f"{args.url}/console"
    driver = browser.chromium()
    try:
        driver.get(f"{console}/")
        browser.wait_for(lambda: driver.find_element(By.ID, "signin").is_displayed())
        shoot(driver, args.out, "0-sign-in")
        browser.sign_in(driver, f"{console}/", api_key())
        browser.wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#collections .ok"))
        shoot(driver, args.out, "1-collections")

        driver.get(f"{console}/jobs")
        link = browser.wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "#jobs-table a"))
        link.click()
        browser.wait_for(lambda: driver.find_element(By.ID, "job"))
        time.sleep(2)  # a few samples on the chart of a running job
        shoot(driver, args.out, "2-jobs")

        driver.get(f"{console}/ask")
        section = browser.ask(driver, QUESTIONS[1][0], args.collection)
        shoot(driver, args.out, "3-ask")
        section.find_element(By.CSS_SELECTOR, ".citations button.cite").click()
        shoot(driver, args.out, "4-ask-passage")

        driver.get(f"{console}/search")
        browser.submit(driver, "search", args.collection, query=QUESTIONS[0][0])
        browser.wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".ranking"), timeout=120)
        shoot(driver, args.out, "5-search")

        driver.get(f"{console}/map?collection={args.collection}")
        canvas = browser.wait_for(
            lambda: driver.find_element(By.CSS_SELECTOR, "#map[data-points]"), timeout=300
        )
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
        x, y = driver.execute_script("return pgragMap.screenOf(0)")
        ActionChains(driver).move_to_element_with_offset(
            canvas, int(x - canvas.size["width"] / 2), int(y - canvas.size["height"] / 2)
        ).click().perform()
        browser.wait_for(lambda: driver.find_element(By.ID, "chunk"))
        shoot(driver, args.out, "6-map")

        driver.get(f"{console}/keys")
        browser.wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#content table"))
        shoot(driver, args.out, "7-keys")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
