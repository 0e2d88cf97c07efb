"""Schemathesis against a live server's own OpenAPI document: no 5xx, and every answer
(status code, content type, headers, body, 405's Allow) is what the document says.

Bounded and seeded, so it runs the same cases each time. Two checks are left out on
purpose: `positive_data_acceptance` (the schema cannot say "exactly one of text and
input_ids" or "a non-empty prompt", which the server answers with a 400 naming the field)
and `negative_data_rejection` (pydantic accepts `"true"` for a boolean, as clients expect).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from e2e.server_process import idle_info, read_log

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def test_schemathesis_finds_no_5xx_and_no_nonconformance(server, tmp_path):
    cmd = [str(SCHEMATHESIS), "run", f"{server.url}/openapi.json", "--max-examples", "10",
           "--seed", "1", "--workers", "1", "--checks", "all",
           "--exclude-checks", "positive_data_acceptance,negative_data_rejection",
           "--request-timeout", "60"]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "generated" in done.stdout  # it really ran cases
    info = idle_info(server.url, timeout=30)
    assert info["integrity_error"] is None and info["token_usage"] == 0
    assert "unhandled error" not in read_log(server.proc)
