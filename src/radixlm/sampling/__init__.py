"""Sampling: per-request parameters, batched token selection, logprobs."""

from radixlm.sampling.batch import SamplingBatch, seeded_uniform
from radixlm.sampling.logprobs import gather_logprobs, token_logprobs
from radixlm.sampling.params import (
    GREEDY_TEMPERATURE_EPS,
    SamplingParams,
    SamplingParamsError,
)
from radixlm.sampling.sampler import (
    SampleOutput,
    apply_penalties,
    draw_from_probs,
    filter_probs,
    process_logits,
    sample,
)

__all__ = [
    "GREEDY_TEMPERATURE_EPS",
    "SampleOutput",
    "SamplingBatch",
    "SamplingParams",
    "SamplingParamsError",
    "apply_penalties",
    "draw_from_probs",
    "filter_probs",
    "gather_logprobs",
    "process_logits",
    "sample",
    "seeded_uniform",
    "token_logprobs",
]
