"""`VLLMPolicy`: token-in, token-out generation with the vLLM offline engine (GPU; extra `envgym[vllm]`).

Written against vLLM's `LLM.generate(prompts=[TokensPrompt(prompt_token_ids=...)],
sampling_params=SamplingParams(logprobs=0, ...))`. The engine is created with
`logprobs_mode="raw_logprobs"` so that, as with `HFPolicy`, logprobs are the
raw model's at temperature 1. `load_weights` pushes a trainer's new weights
into the engine with `LLM.apply_model` (the engine then runs in-process:
`VLLM_ENABLE_V1_MULTIPROCESSING=0` is set before it starts).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from envgym.policies.base import Completion, SamplingParams


def _import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise ImportError("the vllm policy needs vLLM and a GPU: pip install 'envgym[vllm]'") from exc
    return vllm


class VLLMPolicy:
    """A policy over a `vllm.LLM` engine (made by `from_pretrained`, or passed in)."""

    def __init__(self, llm: Any):
        self.vllm = _import_vllm()
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()

    @classmethod
    def from_pretrained(cls, path: str, **engine_kwargs: Any) -> VLLMPolicy:
        """Start an engine on the checkpoint at `path` (`engine_kwargs` go to `vllm.LLM`)."""
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        vllm = _import_vllm()
        settings = {"model": path, "logprobs_mode": "raw_logprobs", "enable_prefix_caching": True, **engine_kwargs}
        return cls(vllm.LLM(**settings))

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        sampling = self.vllm.SamplingParams(
            temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None, include_stop_str_in_output=True, logprobs=0)
        outputs = self.llm.generate([self.vllm.TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
                                    sampling_params=sampling, use_tqdm=False)
        completions = []
        for output in outputs:
            sample = output.outputs[0]
            ids = list(sample.token_ids)
            logprobs = [float(step[token].logprob) for step, token in zip(sample.logprobs, ids)]
            completions.append(Completion(ids, logprobs, sample.text,
                                          "length" if sample.finish_reason == "length" else "stop"))
        return completions

    def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> list[list[float]]:
        """Teacher-forced logprobs of each continuation, from vLLM's prompt logprobs."""
        sampling = self.vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        rows = [list(p) + list(c) for p, c in zip(prompts, continuations)]
        outputs = self.llm.generate([self.vllm.TokensPrompt(prompt_token_ids=r) for r in rows],
                                    sampling_params=sampling, use_tqdm=False)
        return [[float(output.prompt_logprobs[i][row[i]].logprob) for i in range(len(p), len(row))]
                for output, row, p in zip(outputs, rows, prompts)]

    def load_weights(self, state_dict_items: Iterable[tuple[str, Any]]) -> None:
        """Load (name, tensor) pairs, e.g. `model.state_dict().items()` of the trained HF model, into the engine."""
        weights = list(state_dict_items)
        self.llm.apply_model(lambda model: model.load_weights(weights=weights))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
