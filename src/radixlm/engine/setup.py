"""Build the runtime an engine needs: model, tokenizer, KV pool, prefix cache, scheduler."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from radixlm.attention.paged import head_major_fits
from radixlm.config import EngineConfig
from radixlm.distributed.launch import start_tp
from radixlm.grammar import GrammarCache, make_backend
from radixlm.kvcache.chunk_cache import ChunkCache
from radixlm.kvcache.events import attach as attach_kv_events
from radixlm.kvcache.pool import KVPool
from radixlm.kvcache.prefix_cache import PrefixCache
from radixlm.kvcache.radix_cache import RadixCache
from radixlm.kvcache.tiers import attach_disk_tier
from radixlm.loader import LoadedModel, load_model
from radixlm.models.quant import native_int4_max_rows, native_int8_max_rows
from radixlm.native import kernels
from radixlm.scheduler.constraints import Constraints
from radixlm.scheduler.finisher import Finisher
from radixlm.scheduler.scheduler import Scheduler
from radixlm.tokenizer import Tokenizer, load_tokenizer
from radixlm.trace.writer import TraceWriter, header_for

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    loaded: LoadedModel
    tokenizer: Tokenizer | None
    scheduler: Scheduler
    trace: TraceWriter | None = None  # the request trace (--trace-dir), off by default


def build_runtime(
    config: EngineConfig, loaded: LoadedModel | None = None, tokenizer: Tokenizer | None = None
) -> Runtime:
    """Load (or reuse `loaded` / `tokenizer`) and wire the pool, cache and scheduler."""
    loaded = loaded or load_model(config.load, tp=start_tp(config))  # tp: ranks started
    if loaded.device.type == "cpu":
        kernels()  # build (or load) the native kernels now, not in the first decode step
        native_int4_max_rows(), native_int8_max_rows()  # their crossovers (measured once)
    if tokenizer is None and not config.skip_tokenizer_init:
        tok_path = config.load.tokenizer or loaded.path
        tokenizer = load_tokenizer(tok_path, extra_eos_token_ids=loaded.config.eos_token_ids)
    c = config.cache
    sizing = (
        {"max_total_tokens": c.max_total_tokens}
        if c.max_total_tokens is not None
        else {"mem_fraction": c.mem_fraction}
    )
    pool = KVPool.for_model(
        loaded.config, loaded.dtype, loaded.device, model_bytes=loaded.memory_bytes,
        page_size=c.page_size, debug=c.debug,
        head_major=head_major_fits(loaded.config, loaded.dtype, loaded.device), **sizing,
    )  # fmt: skip
    if c.debug:  # the integrity check also proves each cached slot holds its token's K/V
        pool.track_writes()
    cache: PrefixCache = ChunkCache(pool) if c.disable_radix_cache else RadixCache(pool)
    attach_kv_events(cache, c.kv_events_config)  # KV events (kvcache.events), if asked
    if c.cache_dir is not None and isinstance(cache, RadixCache):
        attach_disk_tier(cache, c.cache_dir, c.cache_dir_max_gb, loaded.path,
                         loaded.precision, loaded.device)  # fmt: skip
    eos = tuple(dict.fromkeys(
        (tokenizer.eos_token_ids if tokenizer else ()) + loaded.config.eos_token_ids
    ))  # fmt: skip
    finisher = Finisher(tokenizer, eos, loaded.config.context_length)
    constraints = _constraints(config, loaded, tokenizer, eos)
    scheduler = Scheduler(loaded.model, cache, config.scheduler, finisher, constraints)
    log.info(
        "KV pool: %d tokens (%.1f MiB), radix cache %s, policy %s",
        pool.total, pool.total * pool.shape.bytes_per_token / 2**20,
        "off" if c.disable_radix_cache else "on", config.scheduler.schedule_policy.value,
    )  # fmt: skip
    return Runtime(loaded, tokenizer, scheduler, _trace_writer(config, loaded, scheduler))


def _trace_writer(
    config: EngineConfig, loaded: LoadedModel, scheduler: Scheduler
) -> TraceWriter | None:
    """The request trace of `config.trace`, or None when it is off."""
    t = config.trace
    if t.trace_dir is None:
        return None
    header = header_for(str(loaded.path), scheduler.kv.pool.total, scheduler.capacity,
                        config.scheduler, t.trace_hash, t.trace_page_size)  # fmt: skip
    log.info("request trace in %s%s", t.trace_dir, " (page hashes)" if t.trace_hash else "")
    return TraceWriter(t.trace_dir, header, int(t.trace_max_mb * 2**20), t.trace_max_files)


def _constraints(
    config: EngineConfig, loaded: LoadedModel, tokenizer: Tokenizer | None, eos: tuple[int, ...]
) -> Constraints:
    """Constrained decoding for this tokenizer (off without one, or with backend "none")."""
    sc = config.scheduler
    backend = None
    if tokenizer is not None:
        backend = make_backend(
            sc.grammar_backend, tokenizer.hf_tokenizer, loaded.config.vocab_size, eos
        )
    cache = GrammarCache(backend) if backend is not None else None
    return Constraints(cache, tokenizer, jump_forward=not sc.disable_jump_forward)
