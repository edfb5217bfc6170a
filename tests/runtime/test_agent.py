"""The device agent on loopback in a subprocess, and its client: a real bundle profiled
remotely, auth, upload limits, hostile archives, a corrupt bundle, the queue, a killed agent,
a second agent on the same work dir, SIGTERM, loose token files, no agent paths in errors."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import pytest

from layerwise import __version__
from layerwise.base.errors import LayerwiseError
from layerwise.runtime import profile
from layerwise.runtime.remote import RemoteError, agent_info, remote_profile
from tests.conftest import FIXTURES, ROOT
from tests.fixtures import BLOCK_TORCH_PRELUDE
from tests.fixtures.agent import MAX_UPLOAD_MB, Agent, agent_command, write_token

pytest.importorskip("starlette", reason="the agent extra is not installed")
pytest.importorskip("uvicorn", reason="the agent extra is not installed")


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    return write_token(tmp_path_factory.mktemp("agent-token") / "token")


@pytest.fixture(scope="module")
def agent(tmp_path_factory, token_file):
    root = tmp_path_factory.mktemp("agent")
    a = Agent(root / "work", token_file, root)
    yield a
    a.stop()


@pytest.fixture(scope="module")
def bundle(bundles) -> Path:
    return bundles(f"{FIXTURES}:lstm_classifier")[0]


def _one_line_error(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg, msg
    return msg


def test_remote_profile_returns_the_local_profile(agent, bundle, token_file):
    remote = remote_profile(bundle, agent.url, str(token_file), runs=5, warmup=1, per_op=True)
    local = profile(bundle, runs=5, warmup=1, per_op=True)
    assert set(remote) == set(local) | {"remote"}
    assert remote["bundle"] == local["bundle"] and remote["runs"] == 5 and remote["batch"] == 1
    assert 0 < remote["latency_ms"]["p50"] <= remote["latency_ms"]["p99"]
    assert remote["ops"] and abs(sum(o["share"] for o in remote["ops"]) - 1) < 1e-6
    assert remote["remote"]["agent_version"] == __version__
    assert remote["remote"]["host"] == socket.gethostname()
    assert remote["remote"]["url"] == agent.url
    assert agent.job_dirs() == []  # the job folder is removed after the run
    info = agent_info(agent.url, str(token_file))
    assert info["cpu_count"] == os.cpu_count() and info["runtimes"]["onnx"].startswith(
        "onnxruntime ")
    assert info["max_upload_bytes"] == MAX_UPLOAD_MB << 20
    # the power mode travels to the device's runtime
    slow = remote_profile(bundle, agent.url, str(token_file), runs=2, warmup=0,
                          power_mode="efficiency")
    assert slow["power_mode"] == "efficiency"


def test_token_is_required_and_checked(agent, bundle, tmp_path):
    status, body = agent.request("GET", "/v1/info", token=None)
    assert status == 401 and "token" in body["error"]
    status, body = agent.request("GET", "/v1/info", token="not-the-token-at-all")
    assert status == 403 and "wrong token" in body["error"]
    status, _ = agent.request("POST", "/v1/profile", token=None, body=b"x" * 100)
    assert status == 401
    wrong = write_token(tmp_path / "wrong-token")
    with pytest.raises(RemoteError) as e:
        remote_profile(bundle, agent.url, str(wrong), runs=1)
    assert e.value.status == 403 and str(wrong) in _one_line_error(e.value)


def test_oversized_upload_is_refused(agent, token_file):
    token = token_file.read_text().strip()
    # declared too large: refused from the header, before any of the body is sent
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
    conn.putrequest("POST", "/v1/profile")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Length", str(50 << 20))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "--max-upload-mb" in json.loads(resp.read())["error"]
    conn.close()
    # streamed without a length: counted while it arrives, refused past the limit
    chunks = (b"\0" * (64 << 10) for _ in range(MAX_UPLOAD_MB * 16 + 8))
    status, body = agent.request("POST", "/v1/profile", token, body=chunks,
                                 headers={"Transfer-Encoding": "chunked"})
    assert status == 413 and "limit" in body["error"]
    assert agent.job_dirs() == []


def _archive(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize("case", ["dotdot", "deep-dotdot", "absolute", "symlink", "hardlink",
                                  "device"])
def test_hostile_archive_is_refused_and_writes_nothing_outside(agent, token_file, case):
    outside = agent.work_dir.parent
    absolute = outside / "abs-evil"
    member = {
        "dotdot": (_member("../evil"), b"x"),
        "deep-dotdot": (_member("../../../evil"), b"x"),
        "absolute": (_member(str(absolute)), b"x"),
        "symlink": (_member("model.onnx", tarfile.SYMTYPE, "../../../evil"), None),
        "hardlink": (_member("model.onnx", tarfile.LNKTYPE, "../../../evil"), None),
        "device": (_member("model.onnx", tarfile.CHRTYPE), None),
    }[case]
    before = sorted(p.name for p in outside.iterdir())
    body = _archive([(_member("manifest.json"), b"{}"), member])
    status, reply = agent.request("POST", "/v1/profile", token_file.read_text().strip(), body)
    assert status == 400, reply
    assert "\n" not in reply["error"] and ("outside" in reply["error"]
                                           or "plain files" in reply["error"])
    assert sorted(p.name for p in outside.iterdir()) == before
    assert not absolute.exists() and agent.job_dirs() == []


def test_corrupt_bundle_and_garbage_are_refused(agent, bundle, token_file, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    model = bad / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(RemoteError) as e:
        remote_profile(bad, agent.url, str(token_file), runs=1)
    msg = _one_line_error(e.value)
    assert e.value.status == 400 and "sha256" in msg and "bundle: file model.onnx" in msg
    assert "/tmp" not in msg and str(agent.work_dir) not in msg
    status, reply = agent.request("POST", "/v1/profile", token_file.read_text().strip(),
                                  b"this is not a tar.gz")
    assert status == 400 and "tar.gz" in reply["error"]
    status, reply = agent.request("POST", "/v1/profile?runs=0", token_file.read_text().strip(),
                                  b"")
    assert status == 400 and "runs" in reply["error"]
    assert agent.job_dirs() == []


def test_two_requests_are_served_one_after_the_other(agent, bundle, token_file):
    results: dict[int, dict] = {}
    messages: dict[int, list[str]] = {0: [], 1: []}

    def go(i: int) -> None:
        results[i] = remote_profile(bundle, agent.url, str(token_file), runs=20, warmup=1,
                                    progress=messages[i].append)

    threads = [threading.Thread(target=go, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(results) == {0, 1}
    first, second = sorted(results.values(), key=lambda r: r["remote"]["started_at"])
    assert [first["remote"]["queue_position"], second["remote"]["queue_position"]] == [0, 1]
    assert second["remote"]["started_at"] >= first["remote"]["finished_at"]
    assert any("1 job(s) ahead" in m for ms in messages.values() for m in ms)
    assert agent.job_dirs() == []


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _long_profile(agent: Agent, bundle: Path, token_file: Path
                  ) -> tuple[threading.Thread, list[BaseException], list[int]]:
    """A profile of ten million runs on AGENT in a thread, returned once its job process runs
    (with what the call raised, filled when it ends, and the job process ids)."""
    seen: list[str] = []
    raised: list[BaseException] = []

    def go() -> None:
        try:
            remote_profile(bundle, agent.url, str(token_file), runs=10**7, warmup=0,
                           progress=seen.append)
        except BaseException as e:  # noqa: BLE001 - checked by the caller
            raised.append(e)

    t = threading.Thread(target=go)
    t.start()
    deadline = time.monotonic() + 60
    while not (any("profiling" in m for m in seen) and _children(agent.proc.pid)):
        assert t.is_alive() and time.monotonic() < deadline, (seen, raised)
        time.sleep(0.1)
    assert len(agent.job_dirs()) == 1
    return t, raised, _children(agent.proc.pid)


def _wait_gone(pids: list[int], what: str) -> None:
    deadline = time.monotonic() + 15
    while not all(_gone(pid) for pid in pids):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_agent_killed_mid_run(tmp_path, bundle, token_file, monkeypatch):
    work = tmp_path / "work"
    agent = Agent(work, token_file, tmp_path)
    client_tmp = tmp_path / "client-tmp"
    client_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(client_tmp))
    try:
        t, raised, jobs = _long_profile(agent, bundle, token_file)
        time.sleep(0.5)
        os.kill(agent.proc.pid, signal.SIGKILL)
        t.join(timeout=60)
    finally:
        agent.stop()
    assert not t.is_alive() and len(raised) == 1
    err = raised[0]
    assert isinstance(err, LayerwiseError) and "stopped answering" in _one_line_error(err)
    assert list(client_tmp.iterdir()) == []  # the temporary archive is gone
    _wait_gone(jobs, "the job process outlived its agent")  # it notices and exits
    restarted = Agent(work, token_file, tmp_path)  # its first act: remove the stale job folder
    try:
        assert "removed 1 stale job folders" in restarted.banner
        assert restarted.job_dirs() == []
    finally:
        restarted.stop()


def test_second_agent_on_a_work_dir_is_refused(tmp_path, bundle, token_file):
    """Two agents on one work dir: the second refuses to start (exit 2, one line) and leaves
    the first one's running job alone; once the first is gone its lock is free again."""
    work = tmp_path / "work"
    first = Agent(work, token_file, tmp_path)
    try:
        t, raised, jobs = _long_profile(first, bundle, token_file)
        job_dir, = first.job_dirs()
        second = subprocess.run(agent_command(work, token_file), capture_output=True,
                                text=True, cwd=ROOT, timeout=120, check=False)
        assert second.returncode == 2, second.stderr
        assert second.stdout == "" and second.stderr.count("\n") == 1, second.stderr
        assert "another agent" in second.stderr and "--work-dir" in second.stderr
        assert first.job_dirs() == [job_dir] and (job_dir / "bundle").is_dir()
        assert not any(_gone(pid) for pid in jobs) and first.proc.poll() is None
    finally:
        first.stop()
    t.join(timeout=60)
    assert not t.is_alive() and len(raised) == 1
    again = Agent(work, token_file, tmp_path)
    again.stop()


def test_sigterm_kills_the_job_and_removes_its_folder(tmp_path, bundle, token_file):
    work = tmp_path / "work"
    agent = Agent(work, token_file, tmp_path)
    try:
        t, raised, jobs = _long_profile(agent, bundle, token_file)
        agent.proc.send_signal(signal.SIGTERM)
        agent.proc.wait(timeout=30)
    finally:
        agent.stop()
    assert agent.proc.returncode in (0, -signal.SIGTERM)
    assert agent.job_dirs() == []
    _wait_gone(jobs, "the job process outlived an agent stopped with SIGTERM")
    t.join(timeout=60)
    assert not t.is_alive() and len(raised) == 1
    msg = _one_line_error(raised[0])
    assert isinstance(raised[0], RemoteError) and "stopped" in msg, msg
    assert "removed" not in Agent(work, token_file, tmp_path).banner  # lock free, nothing left


def test_a_token_file_others_may_read_is_refused(tmp_path, bundle):
    loose = write_token(tmp_path / "token")
    loose.chmod(0o644)
    proc = subprocess.run(agent_command(tmp_path / "work", loose), capture_output=True,
                          text=True, cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"chmod 600 {loose}" in proc.stderr and not (tmp_path / "work").exists()
    # the client refuses it too (as ssh refuses a loose key), before it connects
    loose.chmod(0o640)
    with pytest.raises(LayerwiseError, match=f"chmod 600 {loose}") as e:
        remote_profile(bundle, "http://127.0.0.1:9", str(loose), runs=1)
    _one_line_error(e.value)


def _broken_copy(bundle: Path, dest: Path, drop: str = "", garbage: str = "") -> Path:
    """BUNDLE copied to DEST less DROP (still listed), with GARBAGE's bytes replaced and its
    sha256 updated to match (a file that passes the check but that no runtime loads)."""
    shutil.copytree(bundle, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    if drop:
        (dest / drop).unlink()
    for f in manifest["files"]:
        if f["name"] == garbage:
            data = b"not an onnx model" * 8
            (dest / garbage).write_bytes(data)
            f["sha256"], f["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_errors_do_not_reveal_the_agents_paths(agent, bundle, token_file, tmp_path):
    private = (str(agent.work_dir), str(agent.work_dir.resolve()), "/tmp", "job-")
    # refused before the run (a 400 reply): a file the manifest lists is missing
    missing = _broken_copy(bundle, tmp_path / "missing", drop="model.onnx")
    body = _archive([(_member(f.name), f.read_bytes()) for f in sorted(missing.iterdir())])
    status, reply = agent.request("POST", "/v1/profile", token_file.read_text().strip(), body)
    assert status == 400 and reply["error"].startswith("bundle: file model.onnx is missing")
    assert not any(p in reply["error"] for p in private), reply
    # failed in the job process: a streamed error, relayed from the child's result.json
    garbage = _broken_copy(bundle, tmp_path / "garbage", garbage="model.onnx")
    with pytest.raises(RemoteError) as e:
        remote_profile(garbage, agent.url, str(token_file), runs=1, warmup=0)
    msg = _one_line_error(e.value)
    assert e.value.status == 400 and "cannot load model.onnx" in msg, msg
    assert not any(p in msg for p in private), msg
    assert agent.job_dirs() == []


def test_scrub_names_the_agents_folders_neutrally(tmp_path):
    from layerwise.runtime.agent import scrub

    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    work = tmp_path / "link"
    job = f"{real}/job-abc_12"
    assert scrub(f"{job}/bundle: file x is missing", work) == "bundle: file x is missing"
    assert scrub(f"Load model from {job}/bundle/m.onnx failed", work) == (
        "Load model from bundle/m.onnx failed")
    assert scrub(f"cannot write {work}/job-x/result.json", work) == "cannot write job/result.json"
    assert scrub(f"'{work}' is full", work) == "'work-dir' is full"
    assert scrub(f"{tmp_path}/link2/x and {tmp_path}/real.txt", work) == (
        f"{tmp_path}/link2/x and {tmp_path}/real.txt")


def test_unreachable_agent(bundle, token_file):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RemoteError) as e:
        remote_profile(bundle, f"http://127.0.0.1:{port}", str(token_file), runs=1)
    assert "cannot reach the device agent" in _one_line_error(e.value)
    with pytest.raises(LayerwiseError, match="not an agent URL"):
        remote_profile(bundle, "127.0.0.1:8700", str(token_file), runs=1)


BLOCK_TORCH = BLOCK_TORCH_PRELUDE + """
from pathlib import Path
from layerwise.runtime import agent_job, remote
from layerwise.runtime.agent import AgentConfig, build_app
build_app(AgentConfig(b"t" * 16, Path("."), 1 << 20))
assert "torch" not in sys.modules
sys.exit(__import__("layerwise.runtime.agent").runtime.agent.main(["--token-file", sys.argv[1]]))
"""


def test_agent_and_client_are_torch_free_and_refuse_a_missing_token(tmp_path):
    missing = tmp_path / "no-such-token"
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(missing)], capture_output=True,
                          check=False, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "token" in proc.stderr and str(missing) in proc.stderr


def test_remote_profile_of_a_generator(agent, lm_bundle, token_file):
    """A text-generation bundle profiled on the agent: TTFT, tokens/s and per-block time."""
    r = remote_profile(lm_bundle, agent.url, str(token_file), runs=1, prompt_len=8,
                       new_tokens=4)
    assert r["task"] == "text-generation" and r["prompt_len"] == 8 and r["new_tokens"] == 4
    assert r["ttft_ms"] > 0 and r["decode_tokens_per_s"] > 0
    assert [row["layer"] for row in r["per_layer"]][-1] == "other"


@pytest.mark.parametrize("filters", [True, False], ids=["data-filter", "python-3.11.2"])
def test_unpack_without_tarfile_filters_checks_the_same(tmp_path, monkeypatch, filters):
    """Python before 3.11.4 (Debian bookworm, Raspberry Pi OS) has no extraction filters:
    the agent writes the checked members itself, with the same refusals."""
    from layerwise.runtime.agent_wire import ArchiveError, unpack_archive

    if not filters:
        monkeypatch.delattr(tarfile, "data_filter")
    good = tmp_path / "good.tar.gz"
    info = _member("sub/model.onnx")
    info.mode = 0o4777
    good.write_bytes(_archive([(_member("manifest.json"), b"{}"), (info, b"onnx")]))
    unpack_archive(good, tmp_path / "out", 1 << 20)
    assert (tmp_path / "out" / "sub" / "model.onnx").read_bytes() == b"onnx"
    assert (tmp_path / "out" / "sub" / "model.onnx").stat().st_mode & 0o7022 == 0
    for name, member in (("dotdot", (_member("../evil"), b"x")),
                         ("link", (_member("m", tarfile.SYMTYPE, "/etc/passwd"), None)),
                         ("twice", (_member("manifest.json"), b"[]"))):
        bad = tmp_path / f"{name}.tar.gz"
        bad.write_bytes(_archive([(_member("manifest.json"), b"{}"), member]))
        with pytest.raises(ArchiveError):
            unpack_archive(bad, tmp_path / f"out-{name}", 1 << 20)
    assert not (tmp_path / "evil").exists()


def test_a_job_is_over_when_its_process_exits_whatever_it_left_running(tmp_path, monkeypatch):
    """A runtime may leave a helper holding the job's stderr (OpenVINO's telemetry sender,
    forked from a thread, hung in the device image): the agent answers when the job process
    exits and kills what it left in its process group."""
    import asyncio
    import sys

    from layerwise.runtime.agent import AgentConfig, Job, JobQueue

    fake = tmp_path / "python"  # stands in for `python -m layerwise.runtime.agent_job ...`
    fake.write_text("#!/bin/sh\n"
                    "(sleep 300; echo late >&2) &\n"
                    "echo $! > \"$PWD/helper.pid\"\n"
                    'echo \'{"p50_ms": 1.0}\' > "$5"\n')
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    cfg = AgentConfig(token=b"t" * 32, work_dir=tmp_path, max_upload_bytes=1 << 20,
                      job_timeout_s=60)
    job = Job(cfg, JobQueue(), job_dir, {"runs": 1})
    async def run() -> dict:
        out = await job._run_child()
        await asyncio.sleep(0.2)  # the pipes' transports close on the loop
        return out

    t0 = time.monotonic()
    result = asyncio.run(run())
    assert result == {"p50_ms": 1.0} and time.monotonic() - t0 < 30
    helper = int((job_dir / "helper.pid").read_text())
    for _ in range(50):  # killed (a zombie until its parent, gone, is reaped by init)
        state = Path(f"/proc/{helper}/stat")
        if not state.exists() or state.read_text().split(") ")[1][0] == "Z":
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the job's helper is still running")
