"""The app's guards (keys, tenants, Host/Origin, body size, content type) without an engine."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from radixlm.config import ServerConfig, build_engine_config
from radixlm.engine.messages import ModelInfo
from radixlm.server.access import AccessConfig, ApiKey
from radixlm.server.guards import lone_surrogate_field
from radixlm.server.http_server import create_app
from radixlm.server.state import ServerState

INFO = ModelInfo(model_path="tiny", architecture="llama", dtype="float32", device="cpu",
                 weights_mib=0.5, context_length=512, vocab_size=384, max_total_tokens=4096,
                 max_request_tokens=512, pid=0)  # fmt: skip


def _client(tmp_path, base_url: str = "http://127.0.0.1", **access) -> TestClient:
    cfg = ServerConfig(access=AccessConfig(**access), engine=build_engine_config(model="tiny"))
    addr = f"ipc://{tmp_path}/absent"
    return TestClient(create_app(ServerState(cfg, INFO, None, addr, addr)), base_url=base_url)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_api_key_is_required_except_for_health(tmp_path):
    with _client(tmp_path, api_keys=(ApiKey("secret"),)) as c:
        res = c.get("/v1/models")
        assert res.status_code == 401 and res.json()["error"]["type"] == "authentication_error"
        assert c.get("/v1/models", headers=_auth("wrong")).status_code == 401
        ok = c.get("/v1/models", headers=_auth("secret"))
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == "tiny"
        assert c.get("/health").status_code == 200
        assert "www-authenticate" not in res.headers
        page = c.get("/cache")  # a page a person opens: the browser may ask for the key
        assert page.status_code == 401 and page.headers["www-authenticate"].startswith("Basic")
        assert c.get("/v1/models", auth=("any-user", "secret")).status_code == 200
        assert c.get("/v1/models", auth=("any-user", "wrong")).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Basic !!"}).status_code == 401


def test_tenant_keys_reach_only_tenant_routes(tmp_path):
    keys = (ApiKey("root"), ApiKey("ka", "alice"))
    with _client(tmp_path, api_keys=keys) as c:
        assert c.get("/v1/models", headers=_auth("ka")).status_code == 200
        for path in ("/get_server_info", "/metrics", "/flush_cache"):
            res = c.get(path, headers=_auth("ka"))
            assert res.status_code == 403, path
            assert res.json()["error"]["type"] == "permission_error"
        # the admin key passes the guard and reaches the router (no DELETE route: 405)
        assert c.delete("/get_server_info", headers=_auth("root")).status_code == 405
        assert c.delete("/get_server_info", headers=_auth("ka")).status_code == 403


def test_oversized_body_is_a_413_and_unknown_route_a_404(tmp_path):
    with _client(tmp_path, max_body_bytes=4096) as c:
        res = c.post("/generate", content=b"{}", headers={"content-length": "4097"})
        assert res.status_code == 413 and "max-body-bytes" in res.json()["error"]["message"]
        chunks = (b'{"text": "' + b"a" * 1000 for _ in range(8))  # chunked: no length header
        res = c.post("/generate", content=chunks, headers={"content-type": "application/json"})
        assert res.status_code == 413
        res = c.get("/no/such/route")
        assert res.status_code == 404 and res.json()["error"]["message"]


def test_non_json_bodies_are_a_415(tmp_path):
    with _client(tmp_path) as c:
        for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"content-type": ctype} if ctype else {}
            res = c.post("/abort_request", content=b'{"rid": "x"}', headers=headers)
            assert res.status_code == 415, ctype
            assert res.json()["error"]["param"] == "content-type"


@pytest.mark.parametrize("host", ["evil.example", "evil.example:30000", "localhost.evil.com"])
def test_foreign_host_names_are_refused_without_a_key(tmp_path, host):
    with _client(tmp_path) as c:
        res = c.get("/v1/models", headers={"host": host})
        assert res.status_code == 403 and "allowed-hosts" in res.json()["error"]["message"]


def test_local_and_allowed_hosts_pass(tmp_path):
    with _client(tmp_path, allowed_hosts=("models.internal",)) as c:
        for host in ("localhost:30000", "127.0.0.1", "[::1]:30000", "10.1.2.3:80",
                     "models.internal:30000"):  # fmt: skip
            assert c.get("/v1/models", headers={"host": host}).status_code == 200, host
    with _client(tmp_path, api_keys=(ApiKey("k"),)) as c:  # a key makes Host irrelevant
        res = c.get("/v1/models", headers={"host": "evil.example", **_auth("k")})
        assert res.status_code == 200


def test_cross_site_origins_are_refused_unless_allowed(tmp_path):
    with _client(tmp_path) as c:
        res = c.get("/flush_cache", headers={"origin": "http://evil.example"})
        assert res.status_code == 403 and "allowed-origins" in res.json()["error"]["message"]
        same = c.get("/v1/models", headers={"origin": "http://127.0.0.1"})
        assert same.status_code == 200
    with _client(tmp_path, allowed_origins=("http://app.example",)) as c:
        pre = c.options("/v1/models", headers={"origin": "http://app.example",
                                               "access-control-request-method": "POST"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "http://app.example"
        res = c.get("/v1/models", headers={"origin": "http://app.example"})
        assert res.status_code == 200
        assert c.get("/v1/models", headers={"origin": "http://evil.example"}).status_code == 403


def test_a_lone_surrogate_is_a_400_naming_its_field(tmp_path):
    assert lone_surrogate_field(b'{"messages": [{"content": "ok \\ud83d\\ude00"}]}') is None
    body = b'{"model": "m", "messages": [{"role": "user", "content": "x\\ud800y"}]}'
    assert lone_surrogate_field(body) == "messages.0.content"
    with _client(tmp_path) as c:
        res = c.post("/v1/chat/completions", content=body,
                     headers={"content-type": "application/json"})  # fmt: skip
        assert res.status_code == 400 and res.json()["error"]["param"] == "messages.0.content"


def test_405_names_the_allowed_methods(tmp_path):
    with _client(tmp_path) as c:
        res = c.delete("/generate")
        assert res.status_code == 405 and set(res.headers["allow"].split(", ")) == {"POST", "PUT"}


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
