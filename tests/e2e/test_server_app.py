"""The app's guards (API key, body size, content type) in-process, without an engine."""

from __future__ import annotations

from fastapi.testclient import TestClient

from radixlm.config import ServerConfig, build_engine_config
from radixlm.engine.messages import ModelInfo
from radixlm.server.http_server import MAX_BODY_BYTES, create_app
from radixlm.server.state import ServerState

INFO = ModelInfo(model_path="tiny", architecture="llama", dtype="float32", device="cpu",
                 weights_mib=0.5, context_length=512, vocab_size=384, max_total_tokens=4096,
                 max_request_tokens=512, pid=0)  # fmt: skip


def _client(tmp_path, api_key=None) -> TestClient:
    cfg = ServerConfig(api_key=api_key, engine=build_engine_config(model="tiny"))
    addr = f"ipc://{tmp_path}/absent"
    return TestClient(create_app(ServerState(cfg, INFO, None, addr, addr)))


def test_api_key_is_required_except_for_health(tmp_path):
    with _client(tmp_path, api_key="secret") as c:
        res = c.get("/v1/models")
        assert res.status_code == 401 and res.json()["error"]["type"] == "authentication_error"
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.get("/v1/models", headers={"Authorization": "Bearer secret"})
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "tiny"
        assert c.get("/health").status_code == 200


def test_oversized_body_is_a_413_and_unknown_route_a_404(tmp_path):
    with _client(tmp_path) as c:
        headers = {"content-length": str(MAX_BODY_BYTES + 1)}
        res = c.post("/generate", content=b"{}", headers=headers)
        assert res.status_code == 413 and "error" in res.json()
        res = c.get("/no/such/route")
        assert res.status_code == 404 and res.json()["error"]["message"]


def test_json_bodies_are_read_whatever_their_content_type(tmp_path):
    with _client(tmp_path) as c:
        res = c.post("/abort_request", content=b'{"rid": "x"}',
                     headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert res.status_code == 200


def test_each_app_has_its_own_registry_and_finished_requests_are_logged(caplog):
    from radixlm.engine.messages import ChunkMsg, GenerateMsg
    from radixlm.sampling.params import SamplingParams
    from radixlm.server.metrics import ServerMetrics

    quiet, loud = ServerMetrics(request_log=False), ServerMetrics()
    msg = GenerateMsg("r1", [1, 2, 3], SamplingParams())
    meta = {"prompt_tokens": 3, "cached_tokens": 1, "completion_tokens": 2,
            "finish_reason": {"type": "length", "length": 2}}  # fmt: skip
    last = ChunkMsg("r1", "", [9], True, meta)
    with caplog.at_level("INFO", logger="radixlm.server.requests"):
        quiet.request_done(msg, last, 10.0, [(10.5, 1), (10.75, 1)])
        assert not caplog.records
        loud.request_done(msg, last, 10.0, [(10.5, 1), (10.75, 1)])
    line = caplog.records[0].getMessage()
    assert "prompt_tokens=3 cached_tokens=1 completion_tokens=2 ttft=0.500s" in line
    text = loud.render({"prompt_tokens": 3, "cached_tokens": 1}).decode()
    assert "radixlm:time_to_first_token_seconds_count 1.0" in text
    assert "radixlm:inter_token_latency_seconds_sum 0.25" in text
    assert "radixlm:prefix_cache_hits_total 1.0" in text
