"""A real browser for the console: Debian's Chromium driven by Selenium (apt: chromium,
chromium-driver; nothing is downloaded). Shared by tests/test_console.py and bench/console.py."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
T = TypeVar("T")


def available() -> bool:
    return bool(shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER))


def chromium(width: int = 1400, height: int = 1000) -> WebDriver:
    """A headless Chromium of its own (a fresh profile: no cache, no storage)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(condition: Callable[[], T | None], timeout: float = 60, what: str = "") -> T:
    """The first truthy value of `condition` (retried while it raises), within `timeout` s."""
    deadline = time.monotonic() + timeout
    error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as e:  # an element not there yet, or stale after a swap
            error = e
        time.sleep(0.1)
    raise TimeoutError(f"waited {timeout}s for {what or condition}: {error}")


def sign_in(driver: WebDriver, url: str, token: str) -> None:
    """Open the console at `url`, sign in with `token` and wait for the navigation bar."""
    driver.get(url)
    driver.execute_script("sessionStorage.clear()")
    driver.get(url)
    field = wait_for(lambda: driver.find_element(By.ID, "signin-key"), what="the sign-in form")
    field.send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#signin button").click()
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#nav a"), what="the navigation")


def text(driver: WebDriver, selector: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, selector).text


def submit(driver: WebDriver, form_id: str, collection: str | None = None, **fields: str) -> None:
    """Fill the console's form `form_id` (its collection picked, text fields typed) and
    submit it."""
    form = wait_for(lambda: driver.find_element(By.ID, form_id), what=f"the {form_id} form")
    if collection:
        Select(form.find_element(By.NAME, "collection")).select_by_visible_text(collection)
    for name, value in fields.items():
        field = form.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def ask(driver: WebDriver, question: str, collection: str | None = None) -> WebElement:
    """Ask on the console's Ask page (open); the answer's section once it is done."""
    submit(driver, "ask", collection, question=question)
    section = driver.find_element(By.ID, "answer")
    wait_for(lambda: section.get_attribute("data-state"), timeout=300, what="the answer")
    return section
