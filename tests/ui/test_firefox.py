"""The dashboard also works in Firefox: the explorer paints its heatmaps and a click on a head cell
updates the plan summary to exactly what plan_stats says.

Playwright's Firefox needs its own patched build (not downloadable here), so this drives Debian's
firefox-esr through its built-in Marionette protocol (the `marionette_driver` package), no driver binary.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess

import pytest

from tests.ui.conftest import ARTIFACTS
from tests.ui.test_dashboard import expected_params, wait_for

pytestmark = pytest.mark.ui

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def firefox(tmp_path_factory):
    from marionette_driver.marionette import Marionette

    assert FIREFOX, "firefox-esr is not installed (make test installs it)"
    profile = tmp_path_factory.mktemp("firefox-profile")
    port = free_port()
    (profile / "user.js").write_text(
        f'user_pref("marionette.port", {port});\n'
        'user_pref("browser.shell.checkDefaultBrowser", false);\n'
        'user_pref("datareporting.policy.dataSubmissionEnabled", false);\n'
        'user_pref("app.update.disabledForTesting", true);\n'
    )
    proc = subprocess.Popen(
        [FIREFOX, "--headless", "--marionette", "--no-remote", "--profile", str(profile), "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = Marionette(host="127.0.0.1", port=port, socket_timeout=60)
    try:
        wait_for(lambda: _connects(port), timeout=60, interval=0.25, what="Firefox's Marionette port")
        client.start_session()
        client.set_window_rect(width=1440, height=1000)
        yield client
    finally:
        try:
            client.delete_session()
        except Exception:  # the session may never have started
            pass
        proc.terminate()
        proc.wait(timeout=30)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_explorer_paints_and_counts_clicks_in_firefox(firefox, live_app, shared_run):
    # The session's tiny teacher and importance run (tests/conftest.py `shared_run`, on this app): only
    # read here (the clicks change the browser's draft, nothing on the server).
    teacher, run = shared_run["teacher"], {"id": shared_run["run_id"]}

    firefox.navigate(f"{live_app.url}/#/explore/{run['id']}")
    wait_for(
        lambda: firefox.execute_script(
            "const e = document.querySelector('[data-testid=first-paint]'); return !!e && e.textContent !== ''"
        ),
        what="the explorer's first paint in Firefox",
    )
    params = "return Number(document.querySelector('[data-testid=params-total]').dataset.value)"
    assert firefox.execute_script(params) == teacher["spec"]["params_total"]

    # Click layer 0, head 0 (rows are 18 px high): mousedown on the canvas, mouseup on the window.
    firefox.execute_script(
        """
        const canvas = document.querySelector('[data-testid=heads-map] canvas') ||
                       document.querySelector('[data-testid=heads-map]');
        const box = canvas.getBoundingClientRect();
        const at = {clientX: box.left + 0.5 * box.width / 8, clientY: box.top + 9, button: 0, bubbles: true};
        canvas.dispatchEvent(new MouseEvent('mousedown', at));
        window.dispatchEvent(new MouseEvent('mouseup', at));
        """
    )
    expected = expected_params(teacher, {"remove_kv_groups": {0: [0]}})  # GQA: clicks mark whole groups
    wait_for(lambda: firefox.execute_script(params) == expected, timeout=10, what="the summary after a click")

    # The plan panel scrolls on its own; Firefox drew its scrollbar as a light strip beside the dark
    # panel until the theme gave scrollbars explicit colours.
    panel = firefox.execute_script(
        "const p = document.querySelector('[data-testid=planner]'); const s = getComputedStyle(p);"
        "return {bar: p.offsetWidth - p.clientWidth - parseFloat(s.borderLeftWidth) - parseFloat(s.borderRightWidth),"
        " scrolls: p.scrollHeight > p.clientHeight, color: s.scrollbarColor}"
    )
    assert panel["scrolls"] and panel["bar"] > 0, panel  # the case that showed the strip
    assert panel["color"] not in ("", "auto"), panel
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "firefox-explorer.png").write_bytes(base64.b64decode(firefox.screenshot()))
    canvases = firefox.execute_script("return document.querySelectorAll('canvas').length")
    assert canvases >= 3  # heads, neurons and hidden-channel maps painted
