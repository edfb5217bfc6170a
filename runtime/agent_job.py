"""One device-agent job, run in its own process: profile BUNDLE with OPTIONS (JSON) and write
the result, or {"error": ...}, to RESULT (JSON, written whole or not at all).

A child process per job gives each profile a fresh peak-RSS figure and keeps a crashing
runtime from taking the agent down. The agent holds the child's stdin open: when it reads
end-of-file (the agent exited or was killed) the child exits at once, so no job outlives its
agent.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

EXIT_USER_ERROR = 2
EXIT_ORPHANED = 70


def _exit_when_orphaned() -> None:
    sys.stdin.buffer.read()
    os._exit(EXIT_ORPHANED)


def _write(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)


def main(argv: list[str]) -> int:
    bundle, options, result_path = argv[0], json.loads(argv[1]), Path(argv[2])
    threading.Thread(target=_exit_when_orphaned, daemon=True).start()

    from layerwise.base.errors import LayerwiseError
    from layerwise.runtime.profile import profile

    try:
        result = profile(bundle, **options)
    except LayerwiseError as e:
        _write(result_path, {"error": (str(e).splitlines() or [""])[0]})
        return EXIT_USER_ERROR
    _write(result_path, result)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # not sys.exit: the orphan watcher thread is blocked reading stdin, which the interpreter
    # cannot finalize around
    os._exit(code)
