"""The page at `/` in headless Chromium (Debian's chromium + chromedriver, driven by selenium): sign in with a
token, upload an image, see it as a thumbnail, run a thumbnail task and see its result. A screenshot of the final
page is kept as build/test-artifacts/canvas-page.png (or under $CANVAS_ARTIFACTS).

Skipped, saying why, where chromium or chromedriver is not installed (`apt-get install -y chromium
chromium-driver`)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.test_canvas_support import Stack, auth_server, canvas_pg, canvas_stack, png_bytes, token
from tests.test_canvas_tasks import adapter

__all__ = ["auth_server", "canvas_pg", "canvas_stack"]  # fixtures, imported for this module
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[1]
WAIT_S = 60


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("chromium/chromedriver not installed: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="canvas-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-background-networking",
        "--disable-gpu",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def artifacts() -> Path:
    path = Path(os.environ.get("CANVAS_ARTIFACTS") or REPO / "build" / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_sign_in_upload_see_thumbnails_and_task_results(
    browser: WebDriver, canvas_stack: Stack, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    wait: WebDriverWait[WebDriver] = WebDriverWait(driver, WAIT_S)
    image_file = tmp_path / "sunset.png"
    image_file.write_bytes(png_bytes(320, 200, color="coral"))
    user = str(uuid.uuid4())

    driver.get(canvas_stack.canvas_url + "/")
    assert "signed out" in driver.find_element(By.ID, "who").text
    driver.find_element(By.ID, "token").send_keys(token(canvas_stack.auth, user))
    driver.find_element(By.ID, "signin").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "who"), user))
    driver.find_element(By.ID, "file").send_keys(str(image_file))
    driver.find_element(By.ID, "upload").click()
    card = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".image[data-id]")))
    assert "sunset.png" in card.text and "320×200" in card.text
    # The thumbnail is the stored image itself, loaded from its presigned URL: it must have decoded.
    wait.until(
        lambda d: d.execute_script("const i = document.querySelector('img.thumb'); return i.complete && i.naturalWidth")
    )
    assert driver.execute_script("return document.querySelector('img.thumb').naturalWidth") == 320

    card.find_element(By.CSS_SELECTOR, ".run-thumbnail").click()
    with adapter(canvas_stack, tmp_path):
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".task[data-status='SUCCEEDED'] img.result")))
        wait.until(
            lambda d: d.execute_script(
                "const i = document.querySelector('img.result'); return i.complete && i.naturalWidth"
            )
        )
    assert driver.execute_script("return document.querySelector('img.result').naturalWidth") == 128
    shot = artifacts() / "canvas-page.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 1000
