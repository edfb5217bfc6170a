"""The hub's dashboard in headless Chromium (Debian's, driven by Playwright): sign in, submit a
compile through the page's form, watch it complete, and the other pages render."""

from __future__ import annotations

import shutil

import pytest

from tests.fixtures.hub import Hub, hub_with_roles

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    yield from hub_with_roles(tmp_path_factory)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def _signed_in(browser, hub: Hub, role: str, errors: list):
    page = browser.new_context().new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(hub.url + "/")
    assert page.url.endswith("/login")  # not signed in: sent to sign in
    page.fill("#token", hub.tokens[role])
    page.click("#signin")
    page.wait_for_url(hub.url + "/")
    return page


def test_a_job_submitted_through_the_page_completes(hub, browser, tmp_path):
    errors: list = []
    page = _signed_in(browser, hub, "engineer", errors)
    page.fill("#spec", "timm:test_resnet")
    page.select_option("#target", "onnx")
    page.click("#go")
    page.wait_for_url(f"{hub.url}/jobs/*")
    job_id = int(page.url.rsplit("/", 1)[1])
    # the page reloads itself while the job runs
    page.wait_for_selector("span.done, span.failed", timeout=300_000)
    assert page.locator("span.done").count() >= 1, page.inner_text("main")
    assert "verifying" in page.inner_text("#log")
    assert page.locator("#download").count() == 1
    page.screenshot(path=str(tmp_path / "job.png"))
    page.goto(hub.url + "/")
    row = page.locator(f"a[href='/jobs/{job_id}']")
    assert row.count() == 1 and "timm:test_resnet" in page.inner_text("main")
    assert errors == []
    job = hub.call("GET", f"/jobs/{job_id}", hub.tokens["viewer"])[1]
    assert job["state"] == "done" and job["user"] == "engineer"


def test_pages_render_for_each_role(hub, browser):
    errors: list = []
    viewer = _signed_in(browser, hub, "viewer", errors)
    assert viewer.locator("#submit").count() == 0  # viewers read only
    for path, text in (("/leaderboard", "p50"), ("/devices", "No device yet")):
        viewer.goto(hub.url + path)
        assert text in viewer.inner_text("main")
    resp = viewer.goto(hub.url + "/audit")
    assert resp.status == 403 and "admin role" in viewer.inner_text("main")
    errors.remove("Failed to load resource: the server responded with a status of 403 "
                  "(Forbidden)")
    admin = _signed_in(browser, hub, "admin", errors)
    admin.goto(hub.url + "/audit")
    assert "sign in" in admin.inner_text("main")
    admin.goto(hub.url + "/users")
    admin.fill("input[name=name]", "erin")
    admin.select_option("#role", "engineer")
    admin.click("#add-user")
    token = admin.inner_text("#new-token").strip()
    assert hub.call("GET", "/whoami", token)[1] == {"name": "erin", "role": "engineer"}
    assert errors == []


def test_a_plan_search_job_shows_its_pareto_plot(hub, browser, tmp_path):
    import io

    import numpy as np
    import torch

    from tests.fixtures.models import residual_mlp

    model, inputs, _task = residual_mlp()
    path = tmp_path / "mlp.pt2"
    batch = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}
    torch.export.save(torch.export.export(model.eval(), tuple(inputs.values()),
                                          dynamic_shapes=batch), path)
    data = io.BytesIO()
    np.savez(data, **{next(iter(inputs)): np.random.default_rng(0).normal(
        size=(96, 16)).astype(np.float32)})
    eng = hub.tokens["engineer"]
    model_ref = hub.call("POST", "/uploads?name=mlp.pt2", eng, raw_body=path.read_bytes())[1]
    data_ref = hub.call("POST", "/uploads?name=x.npz", eng, raw_body=data.getvalue())[1]
    status, job = hub.call("POST", "/jobs", eng, {
        "kind": "compile", "spec": model_ref["ref"],
        "options": {"data": data_ref["ref"], "max_drop": "2%", "search_budget": "5m"}})
    assert status == 201, job
    done = hub.wait(job["id"], eng)
    assert done["state"] == "done", done["error"]
    assert set(done["result"]["search"]["chosen"]["drop"]) == {"blocks.1", "blocks.3",
                                                               "blocks.5"}
    errors: list = []
    page = _signed_in(browser, hub, "viewer", errors)
    page.goto(f"{hub.url}/jobs/{job['id']}")
    assert page.locator("svg[aria-label=pareto] circle").count() >= 2
    page.click("text=bundle/report.html")
    assert "Plan search" in page.inner_text("h1")
    assert errors == []
