"""End to end in headless Chromium (Debian `chromium` driven by Playwright): rank two tasks with the keyboard and by
dragging, submit, then check the SQLite rows and the exported file; a `<script>` response runs no script."""

import json
import shutil

import pytest

from posttrain.feedback.cli import export
from posttrain.feedback.server import serve_in_thread
from posttrain.feedback.store import Store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
if CHROMIUM is None:
    pytest.skip(
        "Debian chromium is not installed (apt-get install chromium); browser test skipped",
        allow_module_level=True,
    )

ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_rank_two_tasks_then_export(tmp_path, browser):
    db = str(tmp_path / "f.sqlite")
    store = Store(db)
    store.add_tasks(
        [
            {"prompt": [{"role": "user", "content": "What is 2+2?"}], "responses": ["4", "5", XSS]},
            {"prompt": [{"role": "user", "content": "Capital of France?"}], "responses": ["Paris", "Rome"]},
        ]
    )
    token = store.add_labeller("alice")
    server, url = serve_in_thread(db)
    try:
        page = browser.new_page()
        page.goto(f"{url}/?token={token}")
        page.wait_for_selector("#responses li")
        assert page.inner_text("#progress") == "done 0 · remaining 2"
        # the script-like response is shown as text and never runs
        texts = page.locator("#responses li .text").all_inner_texts()
        assert XSS in texts
        assert page.evaluate("window.__pwned") is None
        first = [
            int(i) for i in page.locator("#responses li").evaluate_all("els => els.map(e => e.dataset.index)")
        ]
        # keyboard: select the last response, move it to the top, mark it helpful, flag the second
        page.keyboard.press("3")
        page.keyboard.press("u")
        page.keyboard.press("u")
        page.keyboard.press("h")
        page.keyboard.press("2")
        page.keyboard.press("f")
        expected1 = [first[2], first[0], first[1]]
        page.keyboard.press("Enter")
        sync_api.expect(page.locator("#progress")).to_have_text("done 1 · remaining 1")
        # second task: drag the bottom response above the top one
        items = page.locator("#responses li")
        second = [int(i) for i in items.evaluate_all("els => els.map(e => e.dataset.index)")]
        items.nth(1).drag_to(items.nth(0))
        page.click("#submit")
        page.wait_for_selector("#empty:not([hidden])")
        assert page.inner_text("#progress") == "done 2 · remaining 0"
        assert page.evaluate("window.__pwned") is None
    finally:
        server.shutdown()
        server.server_close()
    rows = {j["task_id"]: j for j in store.judgements()}
    assert rows[1]["ranking"] == expected1
    assert rows[1]["criteria"][str(first[2])]["helpful"] is True
    assert rows[1]["flags"] == [first[0]]
    assert rows[2]["ranking"] == [second[1], second[0]]
    out = tmp_path / "rankings.jsonl"
    assert export(db, str(out)) == 2
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert exported[0]["ranking"] == expected1 and exported[0]["meta"]["labeller"] == "alice"
