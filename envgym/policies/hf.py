"""`HFPolicy`: batched sampling and teacher-forced scoring with a live transformers model (CPU or GPU)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from envgym.policies.base import Completion, SamplingParams

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class HFPolicy:
    """Token-in, token-out policy over a transformers causal LM.

    It wraps the model object itself (no copy), so a trainer that updates the
    weights in place samples from the new weights on the next call. Generation
    uses `model.generate` with left padding and the KV cache, in batches of at
    most `max_batch_size` prompts.

    Log-probabilities: `Completion.logprobs` and `score` are the **raw model's**
    log-probabilities at temperature 1 (log-softmax of the unprocessed logits),
    not those of the temperature/top-p sampling distribution. A PPO ratio
    computed against them is the ratio of the trained model itself; sample at
    temperature 1 and top_p 1 when the two must coincide.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device: str | None = None,
                 max_batch_size: int = 64):
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first")
        self.model = model if device is None else model.to(device)
        self.tokenizer = tokenizer
        self.max_batch_size = int(max_batch_size)
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(eos_ids)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @classmethod
    def from_pretrained(cls, path: str, device: str | None = None, **kwargs) -> HFPolicy:
        """Load a checkpoint directory (model + tokenizer), or `"default"` for the embedded SmolLM2."""
        if path == "default":
            from envgym.models import load_default_model

            model, tokenizer = load_default_model(device)
            return cls(model, tokenizer, **kwargs)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not os.path.isdir(path):
            raise FileNotFoundError(f"hf:{path}: no such checkpoint directory (expected config.json + weights + "
                                    "tokenizer files, or hf:default for the embedded SmolLM2)")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        return cls(model, tokenizer, device=device, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        """One sampled completion per prompt; logprobs are the raw model's (see the class docstring)."""
        completions: list[Completion] = []
        for start in range(0, len(prompts), self.max_batch_size):
            completions.extend(self._generate_batch(prompts[start:start + self.max_batch_size], params))
        return completions

    def _generate_batch(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        import torch
        from transformers import GenerationConfig

        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token; got an empty prompt")
        input_ids, attention_mask = _pad(prompts, self.pad_token_id, left=True, device=self.device)
        greedy = params.temperature == 0
        # Every sampling knob is set explicitly: transformers fills unset (None) ones from the checkpoint's
        # generation_config.json and then from its global defaults (top_k=50), which would change the distribution.
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=0,
            do_sample=not greedy,
            temperature=1.0 if greedy else params.temperature,
            top_p=params.top_p,
            top_k=0,
            min_p=0.0,
            typical_p=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            eos_token_id=sorted(self.eos_token_ids) or None,
            pad_token_id=self.pad_token_id,
            stop_strings=list(params.stop) or None,
            return_dict_in_generate=True,
            output_logits=True,
        )
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                                      tokenizer=self.tokenizer if params.stop else None)
        new_tokens = out.sequences[:, input_ids.shape[1]:]
        logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1)
        chosen = logprobs.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        completions = []
        for row_ids, row_logprobs in zip(new_tokens.tolist(), chosen.tolist()):
            length, reason = self._completion_length(row_ids, params)
            ids = row_ids[:length]
            completions.append(Completion(ids, row_logprobs[:length],
                                          self.tokenizer.decode(ids, skip_special_tokens=True), reason))
        return completions

    def _completion_length(self, ids: list[int], params: SamplingParams) -> tuple[int, str]:
        """How many of a row's generated ids it sampled itself (the rest is padding) and why it stopped."""
        for i, token in enumerate(ids):
            if token in self.eos_token_ids:
                return i + 1, "stop"
            if params.stop and any(s in self.tokenizer.decode(ids[: i + 1]) for s in params.stop):
                return i + 1, "stop"
        return len(ids), "length"

    def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> list[list[float]]:
        """Teacher-forced log p(continuation token | prompt, earlier tokens) at temperature 1, without grad."""
        if len(prompts) != len(continuations):
            raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
        scores: list[list[float]] = []
        for start in range(0, len(prompts), self.max_batch_size):
            stop = start + self.max_batch_size
            scores.extend(self._score_batch(prompts[start:stop], continuations[start:stop]))
        return scores

    def _score_batch(self, prompts, continuations) -> list[list[float]]:
        import torch

        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token to condition the first continuation token on")
        rows = [list(p) + list(c) for p, c in zip(prompts, continuations)]
        input_ids, attention_mask = _pad(rows, self.pad_token_id, left=False, device=self.device)
        with torch.no_grad():
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        logprobs = logits[:, :-1].float().log_softmax(-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        return [logprobs[i, len(p) - 1: len(p) - 1 + len(c)].tolist()
                for i, (p, c) in enumerate(zip(prompts, continuations))]


def _pad(rows: Sequence[Sequence[int]], pad_id: int, *, left: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id rows to one length; returns (input_ids, attention_mask) as int64 tensors on `device`."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)
