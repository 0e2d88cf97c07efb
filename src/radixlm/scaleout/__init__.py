"""Scale-out: N radixlm workers behind an existing cache-aware router.

`radixlm serve --dp N` starts N engine-server workers (each its own processes, cores,
port and radix cache) and a router in front of them: `smg` (SGLang's gateway) by
default, or `vllm-router`, whose `kv_aware` policy follows the workers' KV events
(`radixlm.kvcache.events`). `radixlm router --worker-urls ...` fronts workers that run
elsewhere. radixlm routes nothing itself: `config` holds the frozen settings, `router`
builds the router's command line, `workers` starts and watches the workers, and
`launcher` ties them together and stops everything on Ctrl-C.
"""
