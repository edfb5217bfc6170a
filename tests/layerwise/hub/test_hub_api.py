"""`layerwise serve` over HTTP on loopback: roles, a compile submitted and fetched through the
API, the audit log, bad input, cancel, restart, and the device fleet with a real agent."""

from __future__ import annotations

import io
import json
import signal
import tarfile
import time

import pytest
import torch

from tests.fixtures.agent import Agent, write_token
from tests.fixtures.hub import MAX_UPLOAD_MB, Hub, add_user, hub_with_roles


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def pt2(tmp_path_factory) -> bytes:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pt2") / "tiny.pt2"
    torch.export.save(torch.export.export(Tiny().eval(), (torch.randn(2, 3, 16, 16),)), path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    yield from hub_with_roles(tmp_path_factory)


def _upload(hub: Hub, token: str, name: str, data: bytes) -> tuple[int, dict]:
    return hub.call("POST", f"/uploads?name={name}", token, raw_body=data)


@pytest.fixture(scope="module")
def compiled(hub, pt2) -> dict:
    """A compile of an uploaded .pt2 submitted by the engineer, polled to its end."""
    status, up = _upload(hub, hub.tokens["engineer"], "tiny.pt2", pt2)
    assert status == 201, up
    status, job = hub.call("POST", "/jobs", hub.tokens["engineer"], {
        "kind": "compile", "spec": up["ref"], "options": {"target": "onnx"}})
    assert status == 201 and job["state"] == "queued" and "argv" not in job, job
    return hub.wait(job["id"], hub.tokens["viewer"])


def test_a_compile_submitted_through_the_api_completes_and_its_bundle_is_fetched(hub, compiled):
    assert compiled["state"] == "done", compiled["error"]
    assert compiled["result"]["verification"]["passed"] is True
    status, body, headers = hub.raw("GET", f"/api/v1/jobs/{compiled['id']}/bundle",
                                    hub.tokens["viewer"])
    assert status == 200 and headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("manifest.json"))
    assert {"manifest.json", "model.onnx"} <= names
    assert manifest["target"] == "onnx" and manifest["verification"]["passed"] is True
    status, log, _ = hub.raw("GET", f"/api/v1/jobs/{compiled['id']}/log", hub.tokens["viewer"])
    assert status == 200 and b"verifying" in log and b"exit 0" in log
    status, runs = hub.call("GET", "/runs?kind=compile", hub.tokens["viewer"])
    assert status == 200 and any(r["target"] == "onnx" for r in runs)


def test_roles_tokens_and_the_audit_log(hub, compiled):
    submit = {"kind": "compile", "spec": "timm:test_resnet", "options": {}}
    status, body = hub.call("POST", "/jobs", hub.tokens["viewer"], submit)
    assert status == 403 and "engineer" in body["error"]
    status, body = hub.call("POST", "/jobs", "not-a-token", submit)
    assert status == 401 and body == {"error": "unknown or disabled token"}
    status, body = hub.call("GET", "/jobs", None)
    assert status == 401
    assert hub.call("GET", "/audit", hub.tokens["engineer"])[0] == 403
    assert hub.call("POST", "/users", hub.tokens["engineer"], {"name": "x",
                                                                "role": "admin"})[0] == 403
    status, log = hub.call("GET", "/audit", hub.tokens["admin"])
    assert status == 200
    seen = {(a["user"], a["action"], a["status"]) for a in log}
    assert ("engineer", "upload", 201) in seen and ("engineer", "submit job", 201) in seen
    assert ("viewer", "submit job", 403) in seen and (None, "submit job", 401) in seen
    # append-only: the database itself refuses to rewrite a line
    import sqlite3

    con = sqlite3.connect(hub.data_dir / "hub.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM audit")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE audit SET status = 200")
    con.close()


def test_an_admin_manages_users_and_tokens_are_kept_hashed(hub):
    status, made = hub.call("POST", "/users", hub.tokens["admin"], {"name": "dana",
                                                                    "role": "viewer"})
    assert status == 201 and made["token"]
    assert hub.call("GET", "/whoami", made["token"]) == (200, {"name": "dana",
                                                               "role": "viewer"})
    assert made["token"].encode() not in (hub.data_dir / "hub.db").read_bytes()
    assert hub.call("DELETE", "/users/dana", hub.tokens["admin"])[0] == 200
    assert hub.call("GET", "/whoami", made["token"])[0] == 401


@pytest.mark.parametrize("case", ["unknown option", "unknown spec", "malformed json",
                                  "oversized upload", "unknown kind", "server-set option",
                                  "file option not an upload", "code spec", "bad upload name",
                                  "wrong option type", "below minimum", "not an object"])
def test_bad_input_is_a_4xx_with_one_line(hub, case):
    eng = hub.tokens["engineer"]
    compile_ = {"kind": "compile", "spec": "timm:test_resnet"}
    bodies = {
        "unknown option": (400, {**compile_, "options": {"colour": "red"}}),
        "unknown spec": (400, {**compile_, "spec": "timm:no_such_net"}),
        "unknown kind": (400, {**compile_, "kind": "deploy"}),
        "server-set option": (400, {**compile_, "options": {"out": "/etc"}}),
        "file option not an upload": (400, {**compile_, "options": {"data": "/etc/passwd"}}),
        "code spec": (400, {**compile_, "spec": "os:system"}),
        "wrong option type": (400, {**compile_, "options": {"heal_steps": "many"}}),
        "below minimum": (400, {**compile_, "options": {"heal_steps": -1}}),
        "not an object": (400, ["compile"]),
    }
    if case == "malformed json":
        want, (status, body) = 400, hub.call("POST", "/jobs", eng, raw_body=b'{"kind": ')
    elif case == "oversized upload":
        want, (status, body) = 413, _upload(hub, eng, "big.npz",
                                            b"\0" * ((MAX_UPLOAD_MB + 1) << 20))
    elif case == "bad upload name":
        want, (status, body) = 400, _upload(hub, eng, "..%2F..%2Fx.pt2", b"x")
    else:
        want, payload = bodies[case]
        status, body = hub.call("POST", "/jobs", eng, payload)
    assert status == want, body
    assert set(body) == {"error"} and "\n" not in body["error"] and body["error"]
    assert "Traceback" not in body["error"]


def test_unknown_route_and_job_are_json_404(hub):
    status, body = hub.call("GET", "/jobs/99999", hub.tokens["viewer"])
    assert status == 404 and set(body) == {"error"}
    status, body = hub.call("GET", "/nothing", hub.tokens["viewer"])
    assert status == 404 and set(body) == {"error"}
    status, body = hub.call("GET", "/jobs/1/files/..%2F..%2Fhub.db", hub.tokens["viewer"])
    assert status == 404


def test_openapi_schema_lists_every_cli_option(hub):
    import dataclasses

    from layerwise.hub.jobspec import SERVER_SET
    from layerwise.options import CompileOptions
    from layerwise.spec import SourceOptions

    status, doc = hub.call("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    props = doc["components"]["schemas"]["CompileOptions"]["properties"]
    declared = {f.name for c in (CompileOptions, SourceOptions)
                for f in dataclasses.fields(c)} - SERVER_SET
    assert set(props) == declared
    assert {"/api/v1/jobs", "/api/v1/uploads", "/api/v1/audit"} <= set(doc["paths"])


def test_cancel_a_running_job(hub):
    eng = hub.tokens["engineer"]
    status, job = hub.call("POST", "/jobs", eng, {"kind": "compile", "spec": "timm:resnet18",
                                                   "options": {"target": "tvm"}})
    assert status == 201
    deadline = time.monotonic() + 120
    while hub.call("GET", f"/jobs/{job['id']}", eng)[1]["state"] == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    status, after = hub.call("POST", f"/jobs/{job['id']}/cancel", eng)
    assert status == 200 and after["state"] == "cancelled"
    assert hub.call("POST", f"/jobs/{job['id']}/cancel", eng)[0] == 409


def test_jobs_survive_a_restart(tmp_path, pt2):
    data = tmp_path / "hub"
    token = add_user(data, "eng", "engineer")
    hub = Hub(data, tmp_path)
    try:
        up = _upload(hub, token, "tiny.pt2", pt2)[1]
        first = hub.call("POST", "/jobs", token, {"kind": "compile", "spec": "timm:resnet18",
                                                  "options": {"target": "tvm"}})[1]
        second = hub.call("POST", "/jobs", token, {"kind": "compile", "spec": up["ref"]})[1]
        while hub.call("GET", f"/jobs/{first['id']}", token)[1]["state"] != "running":
            time.sleep(0.2)
        pid = hub.call("GET", f"/jobs/{first['id']}", token)[1]
        hub.proc.send_signal(signal.SIGKILL)  # no chance to clean up
        hub.proc.wait(timeout=30)
        hub = Hub(data, tmp_path)
        lost = hub.call("GET", f"/jobs/{first['id']}", token)[1]
        assert lost["state"] == "failed" and "server stopped" in lost["error"], pid
        assert hub.wait(second["id"], token)["state"] == "done"
    finally:
        hub.stop()


def test_profile_dispatched_to_a_fleet_device(hub, compiled, tmp_path):
    token_file = write_token(tmp_path / "agent.token")
    agent = Agent(tmp_path / "work", token_file, tmp_path)
    try:
        device = {"name": "bench-box", "url": agent.url,
                  "token": token_file.read_text().strip()}
        assert hub.call("POST", "/devices", hub.tokens["engineer"], device)[0] == 403
        status, dev = hub.call("POST", "/devices", hub.tokens["admin"], device)
        assert status == 201 and dev["last_info"]["runtimes"]["onnx"], dev
        assert hub.call("POST", "/devices", hub.tokens["admin"], {**device, "token": "x",
                                                                   "name": "b2"})[0] == 400
        status, job = hub.call("POST", "/jobs", hub.tokens["engineer"], {
            "kind": "profile", "bundle": f"job:{compiled['id']}", "agent": "bench-box",
            "options": {"runs": 5, "warmup": 1}})
        assert status == 201, job
        done = hub.wait(job["id"], hub.tokens["viewer"])
        assert done["state"] == "done", done["error"]
        assert done["result"]["remote"]["url"] == agent.url
        assert done["result"]["latency_ms"]["p50"] > 0
        status, fleet = hub.call("GET", "/devices", hub.tokens["viewer"])
        assert [(d["name"], d["state"]) for d in fleet] == [("bench-box", "online")]
    finally:
        agent.stop()
    status, fleet = hub.call("GET", "/devices", hub.tokens["viewer"])
    assert fleet[0]["state"] == "offline" and fleet[0]["last_error"]
