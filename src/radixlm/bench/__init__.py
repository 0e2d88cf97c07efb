"""`radixlm bench`: prefix-sharing workloads, a load generator, backends, reports.

- `workloads`: deterministic workloads of exact token counts (shared-prefix, multi-turn,
  few-shot, rag, branching, unique, scrambled); `oracle`: the best hit rate any cache
  could reach on the prompts as they were sent.
- `backends`: radixlm's native /generate and OpenAI /v1/completions and
  /v1/chat/completions over HTTP (streaming, to time every token); `hf_baseline`: plain
  `transformers` generation one request at a time, in-process.
- `runner`: open-loop Poisson or all-at-once arrivals, a concurrency cap, requests that
  wait for their parent's answer; `metrics`: throughput and latency percentiles.
- `record`: one JSON record per run; `report` and `plots`: records -> markdown and PNGs.

The HTTP backends import nothing from the engine side: they reach a server over HTTP only.
"""
