"""The Dagster UI in a real browser: `dagster dev` on 127.0.0.1 over a tiny materialized chain, driven by Debian's
Chromium through Playwright. Asserts what a newcomer sees (the expanded asset graph, the headline plots of
`prior_eval` and `steering` in place) and saves the screenshots shown in the README (docs/screenshots/)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from glp_dagster.definitions import build_definitions
from tests.glp_dagster.conftest import tiny_settings

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
KEY = "builtin/L1"
# Chromium flags for a headless run with no network and no sandbox (the tests run as root in a container)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium "
                       "(make test-browser does it)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, timeout_s: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dagster dev exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"dagster dev did not answer {url} in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture()
def ui(tmp_path: Path):
    """A tiny chain materialized into a fresh DAGSTER_HOME, and `dagster dev` serving it; yields its base URL."""
    pytest.importorskip("playwright", reason="playwright is not installed: pip install -e '.[test]'")
    settings = tiny_settings(tmp_path)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "dagster.yaml", home / "dagster.yaml")  # as `make dev` does
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLP_")}
    env |= {f"GLP_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
            for k, v in settings.model_dump(mode="json").items()}
    env |= {"DAGSTER_HOME": str(home), "DAGSTER_DISABLE_TELEMETRY": "1"}
    defs = build_definitions(settings)
    selection = dg.AssetSelection.assets("prior_eval", "steering").upstream()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        res = dg.materialize(list(defs.assets) + list(defs.asset_checks), selection=selection, instance=instance,
                             partition_key=KEY, resources=defs.resources)
        assert res.success
    port = _free_port()
    log = tmp_path / "dagster_dev.log"
    root = Path(__file__).resolve().parents[2]
    with open(log, "w") as out:
        # its own session: stopped below by its process group id, with the code server and daemon it starts
        proc = subprocess.Popen([sys.executable, "-m", "dagster", "dev", "-w", str(root / "workspace.yaml"),
                                 "-h", "127.0.0.1", "-p", str(port)], cwd=root, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(f"http://127.0.0.1:{port}/server_info", 120, proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _inline_charts(page) -> list[dict]:  # noqa: ANN001 (playwright Page)
    """The inline charts (glp.report's SVG data URIs) drawn on the page: decoded and laid out."""
    return page.eval_on_selector_all(
        "img[src^='data:image/svg+xml']",
        "els => els.map(e => ({w: e.naturalWidth, h: e.getBoundingClientRect().height, ok: e.complete}))")


def test_asset_graph_and_asset_pages_show_the_pipeline_and_its_plots(ui: str):
    from playwright.sync_api import expect, sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        context = browser.new_context(viewport={"width": 1920, "height": 1080})
        page = context.new_page()  # a first visit: nothing in localStorage says a dialog was already seen

        # the asset graph opens with every asset drawn (one group: no collapsed group boxes)
        page.goto(f"{ui}/asset-groups", wait_until="networkidle")
        for name in ("corpus", "activations", "glp_prior", "prior_eval", "steering", "probes"):
            expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=60_000)
        page.wait_for_timeout(1000)
        # no "Join the Dagster community" newsletter dialog over the page (dagster.yaml: nux.enabled false)
        expect(page.get_by_role("dialog")).to_have_count(0)
        expect(page.get_by_text("Dagster community")).to_have_count(0)
        page.screenshot(path=SCREENSHOTS / "asset_graph.png")

        for asset, headline in (("prior_eval", "loss_by_t"), ("steering", "pareto")):
            page.goto(f"{ui}/assets/{asset}", wait_until="networkidle")
            label = page.get_by_text(headline, exact=True).first
            expect(label).to_be_visible(timeout=60_000)
            label.scroll_into_view_if_needed()
            chart = page.locator("img[src^='data:image/svg+xml']").first
            expect(chart).to_be_visible(timeout=30_000)
            page.wait_for_timeout(500)
            charts = _inline_charts(page)
            assert charts and all(c["ok"] and c["w"] > 0 and c["h"] > 100 for c in charts), charts
            page.evaluate("window.scrollBy(0, -120)")
            page.screenshot(path=SCREENSHOTS / f"{asset}.png")
        browser.close()
    for name in ("asset_graph", "prior_eval", "steering"):
        size = (SCREENSHOTS / f"{name}.png").stat().st_size
        assert 10_000 < size < 300_000, (name, size)
