"""The device agent's work dir: created private, a loose or foreign one refused, one agent per
folder (an exclusive lock), stale job folders swept only under the lock."""

from __future__ import annotations

import os
import stat

import pytest

from layerwise.base.errors import LayerwiseError
from layerwise.runtime.agent_workdir import LOCK_NAME, claim
from tests.fixtures.agent import write_token

pytestmark = pytest.mark.skipif(os.name != "posix", reason="flock and modes are POSIX")


def test_work_dir_is_created_private(tmp_path):
    path = tmp_path / "a" / "work"
    work, swept = claim(path)
    with work:
        assert swept == 0 and work.held and work.path == path
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        assert stat.S_IMODE((path / LOCK_NAME).stat().st_mode) == 0o600
    assert not work.held


def test_a_work_dir_held_by_a_live_agent_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "work"
    first, _ = claim(path)
    job = path / "job-running"
    (job / "bundle").mkdir(parents=True)
    with first, pytest.raises(LayerwiseError) as e:
        claim(path)  # flock: a second open file description conflicts, even in one process
    msg = str(e.value)
    assert "\n" not in msg and "another agent" in msg and "--work-dir" in msg
    assert f"pid {os.getpid()}" in msg and (job / "bundle").is_dir()
    # the first agent gone, the next one sweeps what it left
    second, swept = claim(path)
    with second:
        assert swept == 1 and not job.exists() and (path / LOCK_NAME).exists()


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_a_work_dir_others_can_write_is_refused(tmp_path, mode):
    path = tmp_path / "work"
    path.mkdir()
    (path / "job-x").mkdir()
    path.chmod(mode)
    with pytest.raises(LayerwiseError, match=f"chmod 700 {path}") as e:
        claim(path)
    assert "\n" not in str(e.value) and (path / "job-x").is_dir()
    assert not (path / LOCK_NAME).exists()


@pytest.mark.skipif(os.name == "posix" and os.geteuid() != 0, reason="chown needs root")
def test_a_work_dir_of_another_user_is_refused(tmp_path):
    path = tmp_path / "work"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    with pytest.raises(LayerwiseError, match="another user") as e:
        claim(path)
    assert "--work-dir" in str(e.value)


def test_the_cli_refuses_a_loose_work_dir_with_one_line(tmp_path, capsys):
    pytest.importorskip("uvicorn", reason="the agent extra is not installed")
    from layerwise.runtime.agent import main

    token = write_token(tmp_path / "token")
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    work.chmod(0o775)
    code = main(["--token-file", str(token), "--work-dir", str(work), "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"chmod 700 {work}" in err, err
