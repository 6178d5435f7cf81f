"""Browser fixtures: the system Chromium driven by Playwright against `live_app` (tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import settle_jobs

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
SCREENSHOTS = REPO / "docs" / "screenshots"  # tracked: rewritten only when asked (doc_shot)
CHROMIUM = os.environ.get("PRUNESCOPE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def live_app(shared_live_app):
    """tests/ui's modules share one running app (tests/conftest.py `shared_live_app`): same interface as
    the per-module `live_app` there. Whatever a module leaves queued or running is cancelled at its end."""
    yield shared_live_app
    left = settle_jobs(shared_live_app)
    if left:
        print(f"cancelled jobs left by the module: {left}")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh page (1440 x 1000); JS errors in the page fail the test."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(30_000)
    yield pg
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def shot(page, name: str) -> Path:
    """Save a full-page screenshot under test-artifacts/ (gitignored) and return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def doc_shot(page, name: str) -> Path:
    """A screenshot the README shows: saved under test-artifacts/ like `shot`, and copied over the tracked
    docs/screenshots/<name>.png only when PRUNESCOPE_UPDATE_SCREENSHOTS=1 (a test run leaves docs/ alone)."""
    path = shot(page, name)
    if os.environ.get("PRUNESCOPE_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOTS / f"{name}.png")
    return path
