"""The live view in a real browser: headless Chromium (Debian's) driven by Playwright.

Skips with a reason when chromium or playwright is missing. Screenshots go to test-artifacts/.
Needs: ``apt-get install chromium`` and ``pip install playwright aiohttp`` (never
``playwright install``: the browser is Debian's).
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("aiohttp", reason="the live view needs aiohttp (pip install aiohttp)")
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install playwright)")

from medacq.daemon.bench.view import VIEW_RIG, ViewRig, browser_args, chromium_path  # noqa: E402

from conftest import wait_for  # noqa: E402

if chromium_path() is None:
    pytest.skip("browser tests need Debian's chromium (apt-get install chromium)", allow_module_level=True)

UPDATES_JS = ("Object.fromEntries([...document.querySelectorAll('.panel')]"
              ".map(p => [p.dataset.topic, +p.dataset.updates]))")


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path(), args=browser_args(), headless=True)
        try:
            yield b
        finally:
            b.close()


def test_page_shows_live_panels_and_buttons_reach_the_daemon(browser, artifacts):
    with ViewRig(VIEW_RIG) as rig:
        page = browser.new_page(viewport={"width": 1400, "height": 1700})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(rig.view_url)
        expected = {f"{r}/{e.name}" for e in VIEW_RIG for r in ("raw", "recon")}
        # panels appear for every running stream, built from descriptors alone
        page.wait_for_function(
            "names => names.every(n => { const p = document.querySelector(`.panel[data-topic=\"${n}\"]`);"
            " return p && +p.dataset.updates > 0; })", arg=sorted(expected), timeout=30000)
        kinds = page.evaluate("Object.fromEntries([...document.querySelectorAll('.panel')]"
                              ".map(p => [p.dataset.topic, p.dataset.kind]))")
        assert kinds == {"raw/synth0": "trace", "recon/synth0": "trace", "raw/img0": "image",
                         "recon/img0": "image", "raw/val0": "scalar", "recon/val0": "scalar"}
        # values update: draw counters grow and the scalar numbers change
        before = page.evaluate(UPDATES_JS)
        text0 = page.inner_text('.panel[data-topic="raw/val0"] .values')
        page.wait_for_timeout(1500)
        after = page.evaluate(UPDATES_JS)
        assert all(after[k] > before[k] for k in expected), (before, after)
        assert page.inner_text('.panel[data-topic="raw/val0"] .values') != text0
        # trace canvas has drawn pixels (not just the background)
        lit = page.evaluate("""() => { const c = document.querySelector('.panel[data-topic="raw/synth0"] canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] + d[i+1] + d[i+2] > 300) n++; return n; }""")
        assert lit > 200
        # health table and measured latency
        wait_for(lambda: page.inner_text('#health tr[data-topic="raw/synth0"]').count("acquiring"), timeout=10)
        page.wait_for_function("document.getElementById('latency').dataset.p50 > 0", timeout=10000)
        page.screenshot(path=str(artifacts / "view_running.png"), full_page=True)

        # a button press reaches the daemon through the control plane
        page.click('.card[data-device="synth0"] button[data-cmd="stop"]')
        with rig.control() as c:
            wait_for(lambda: c.request("status")["streams"]["synth0"]["state"] in ("idle", "stopped"), timeout=15)
        page.wait_for_function("document.querySelector('#health tr[data-topic=\"raw/synth0\"]').dataset.state"
                               " !== 'acquiring'", timeout=10000)
        page.wait_for_selector(".toast.ok", timeout=5000)
        page.screenshot(path=str(artifacts / "view_stopped.png"), full_page=True)
        page.click('.card[data-device="synth0"] button[data-cmd="start"]')
        with rig.control() as c:
            wait_for(lambda: c.request("status")["streams"]["synth0"]["state"] == "acquiring", timeout=15)
        # a reconstruction-stage action (synthetic: reset the running mean)
        page.click('.card[data-device="img0"] button[data-action="reset"]')
        page.wait_for_function("(document.body.dataset.lastReply || '').includes('\"ok\":true')", timeout=10000)
        assert errors == []


def test_slow_page_does_not_slow_acquisition(browser, artifacts):
    """A page whose drawing takes 200 ms per frame gets fewer updates; the daemon drops nothing."""
    with ViewRig(VIEW_RIG) as rig:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.add_init_script("""(() => { const raf = window.requestAnimationFrame.bind(window);
            window.requestAnimationFrame = cb => raf(t => { const e = performance.now() + 200;
                while (performance.now() < e) {} cb(t); }); })()""")
        page.goto(rig.view_url)
        page.wait_for_function("+(document.querySelector('.panel[data-topic=\"raw/synth0\"]')||{dataset:{}})"
                               ".dataset.updates > 0", timeout=30000)
        t0 = time.monotonic()
        u0 = page.evaluate(UPDATES_JS)
        page.wait_for_timeout(3000)
        u1 = page.evaluate(UPDATES_JS)
        rate = (u1["raw/synth0"] - u0["raw/synth0"]) / (time.monotonic() - t0)
        assert rate < 10  # ≤ 5 draws/s of one rAF each (vs 20/s for a fast page)
        with rig.control() as c:
            st = c.request("status")["streams"]
        assert all(s["drops"] == 0 and s["state"] == "acquiring" and s["fps"] > 0.8 * rate_of(n)
                   for n, s in st.items()), st


def test_page_without_the_token_shows_no_data_and_no_controls(browser, artifacts):
    """No token (or a wrong one): a 401 page that says how to log in, and nothing else. With the
    printed address: the live page, the token moved into an HttpOnly cookie and out of the address bar."""
    with ViewRig(VIEW_RIG) as rig:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        for url in (rig.view_base, rig.view_base + "?token=" + "x" * 43):
            resp = page.goto(url)
            assert resp is not None and resp.status == 401
            page.wait_for_timeout(1500)  # time enough for any script to have drawn something
            assert page.inner_text("#login").startswith("medacq live view: token needed")
            assert page.evaluate("document.querySelectorAll('.panel, button, canvas, #health').length") == 0
            assert "synth0" not in page.content()
        page.screenshot(path=str(artifacts / "view_no_token.png"), full_page=True)
        assert page.context.cookies() == []

        resp = page.goto(rig.view_url)
        assert resp is not None and resp.status == 200
        page.wait_for_function("+(document.querySelector('.panel[data-topic=\"raw/synth0\"]')||{dataset:{}})"
                               ".dataset.updates > 0", timeout=30000)
        page.wait_for_selector('.card[data-device="synth0"] button[data-cmd="stop"]', timeout=10000)
        assert page.is_hidden("#mode")  # an operator view
        assert "token" not in page.url and page.url == rig.view_base
        (cookie,) = page.context.cookies()
        assert cookie["value"] == rig.view_token and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read it
        page.reload()  # the cookie alone logs the page in again
        page.wait_for_function("+(document.querySelector('.panel[data-topic=\"raw/synth0\"]')||{dataset:{}})"
                               ".dataset.updates > 0", timeout=30000)


def test_read_only_page_shows_data_and_no_controls(browser, artifacts):
    with ViewRig(VIEW_RIG, operator=False) as rig:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(rig.view_url)
        page.wait_for_function("+(document.querySelector('.panel[data-topic=\"raw/val0\"]')||{dataset:{}})"
                               ".dataset.updates > 0", timeout=30000)
        page.wait_for_selector('.card[data-device="synth0"] .badge.state', timeout=10000)
        page.wait_for_function("document.body.dataset.operator === '0'", timeout=10000)
        assert page.is_visible("#mode") and page.inner_text("#mode") == "read-only"
        assert page.evaluate("document.querySelectorAll('button[data-cmd]').length") == 0
        # a hand-made control message (as a script on the page could send) is refused by the server
        page.evaluate("send({op: 'ctl', req: 99, target: 'daemon', cmd: 'stop', fields: {device: 'synth0'}})")
        page.wait_for_function("(document.body.dataset.lastReply || '').includes('\"ok\":false')", timeout=10000)
        page.wait_for_selector(".toast.bad", timeout=5000)
        assert "read-only view" in page.inner_text(".toast.bad")
        page.screenshot(path=str(artifacts / "view_read_only.png"), full_page=True)
        with rig.control() as c:
            assert c.request("status")["streams"]["synth0"]["state"] == "acquiring"


def rate_of(name: str) -> float:
    return next(e.settings["rate_hz"] for e in VIEW_RIG if e.name == name)


@pytest.mark.slow
def test_default_rig_every_family_gets_a_panel(browser, artifacts):
    """`medacq up`'s rig (whatever families are in the tree): every acquiring stream gets a panel."""
    from medacq.simulators.rig import DEFAULT_RIG

    with ViewRig(DEFAULT_RIG) as rig:
        page = browser.new_page(viewport={"width": 1500, "height": 2400})
        page.goto(rig.view_url)
        with rig.control() as c:
            def acquiring() -> set[str]:
                return {n for n, s in c.request("status")["streams"].items() if s["state"] == "acquiring"}
            wait_for(lambda: len(acquiring()) == len(DEFAULT_RIG), timeout=60, interval=0.5)
            names = acquiring()

        def shown() -> set[str]:
            ups = page.evaluate("[...document.querySelectorAll('.panel')].filter(p => +p.dataset.updates > 0)"
                                ".map(p => p.closest('.card').dataset.device)")
            return set(ups)

        try:
            wait_for(lambda: names <= shown(), timeout=60, interval=0.5)
        finally:
            page.screenshot(path=str(artifacts / "view_default_rig.png"), full_page=True)
