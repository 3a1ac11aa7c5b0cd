"""`HFPolicy`: batched sampling and teacher-forced scoring with a live transformers model (CPU or GPU).

Multi-turn rollouts call `generate` once per turn with each episode's whole
context. With `cache_keys` (one key per prompt, one key per episode) the
policy keeps each episode's KV cache between calls, so a turn prefills only
the tokens the chat added since the episode's last sample (see
`envgym.policies.kv_cache`). The caller's side of that contract:

- `release(keys)` when episodes end (their caches are dropped);
- `weights_changed()` after the model's weights change in place (all caches
  are dropped: they were computed with the old weights). A parameter modified
  in place through torch (an optimizer step, `load_state_dict`) is also
  noticed on the next call by its version counter, so a forgotten call costs
  no correctness; the call is the contract.

Sampled ids and logprobs are what a fresh prefill of the same prompts gives
(up to float rounding, ~1e-6): the cache holds exactly the keys and values a
fresh prefill would compute.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from envgym.policies.base import Completion, SamplingParams
from envgym.policies.kv_cache import CachedPrefix, EpisodeKVCache

if TYPE_CHECKING:
    import torch
    from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

#: A separate batch costs one more decode pass over the weights per generated token; on a CPU that is about
#: the price of prefilling 16 tokens (SmolLM2: 150 ms per decode step, 7-14 ms per prefilled token).
_PREFILL_TOKENS_PER_DECODE_STEP = 16


@dataclass
class _Row:
    """One prompt of a `generate` call on the cached path."""

    prompt: Sequence[int]
    key: Hashable | None
    prefix: CachedPrefix | None
    reusable: int  # leading prompt tokens whose KV `prefix` holds

    @property
    def new_tokens(self) -> int:
        return len(self.prompt) - self.reusable


@dataclass
class _Batch:
    """The tensors of one batch on the cached path.

    Every row computes its last `width` prompt tokens (right-aligned; a shorter prompt is left-padded),
    after `past` cache columns holding the first `kept[i]` tokens of row i from its episode's cache,
    right-aligned (left-padded with masked zeros). Position ids are each token's index in its episode.
    """

    input_ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    cache: DynamicCache
    kept: list[int]
    starts: list[int]  # the cache column of each row's first token

    @classmethod
    def lay_out(cls, rows: list[_Row], pad_token_id: int, device) -> _Batch:
        import torch
        from transformers import DynamicCache

        width = max(row.new_tokens for row in rows)
        kept = [max(0, len(row.prompt) - width) for row in rows]  # <= row.reusable, as width >= row.new_tokens
        past = max(kept)
        input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), past + width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        starts = []
        for i, row in enumerate(rows):
            tail = list(row.prompt[kept[i]:])
            input_ids[i, width - len(tail):] = torch.tensor(tail)
            positions[i, width - len(tail):] = torch.arange(kept[i], len(row.prompt))
            mask[i, past - kept[i]:past] = 1
            mask[i, past + width - len(tail):] = 1
            starts.append(past + width - len(row.prompt))
        cache = DynamicCache()
        if past:
            source = next(row.prefix.layers for row, n in zip(rows, kept) if n)
            for layer in range(len(source)):
                keys, values = (t.new_zeros((len(rows), t.shape[1], past, t.shape[3])) for t in source[layer])
                for i, (row, n) in enumerate(zip(rows, kept)):
                    if n:
                        keys[i, :, past - n:] = row.prefix.layers[layer][0][0, :, :n]
                        values[i, :, past - n:] = row.prefix.layers[layer][1][0, :, :n]
                cache.update(keys, values, layer)
        return cls(input_ids.to(device), mask.to(device), positions.to(device), cache, kept, starts)

    def row_cache(self, i: int, ids: list[int]) -> CachedPrefix:
        """Row i's keys and values for the tokens `ids` (its prompt and the sampled tokens fed back)."""
        span = slice(self.starts[i], self.starts[i] + len(ids))
        return CachedPrefix(ids, [(layer.keys[i:i + 1, :, span].clone(), layer.values[i:i + 1, :, span].clone())
                                  for layer in self.cache.layers])


class HFPolicy:
    """Token-in, token-out policy over a transformers causal LM.

    It wraps the model object itself (no copy), so a trainer that updates the
    weights in place samples from the new weights on the next call (call
    `weights_changed()` after an update; see the module docstring).

    Generation: prompts are batched by similar length (how many tokens each
    must compute, after what its episode's cache already holds), at most
    `max_batch_size` to a batch, left-aligned on a shared KV cache. Episode
    caches hold at most `cache_budget_tokens` tokens in all; past that the
    least recently used are dropped and those episodes prefill afresh.
    `kv_reuse=False` selects the path before episode caches existed (every
    prompt prefilled in full by `model.generate`, batches in call order), kept
    as the baseline of `benchmarks/rollout.py`.

    Context: a completion stops where prompt plus completion fill the model's
    `context_window` (`max_position_embeddings`) with finish_reason
    "context"; a prompt that fills it already gets an empty "context"
    completion, without running the model.

    Log-probabilities: `Completion.logprobs` and `score` are the **raw model's**
    log-probabilities at temperature 1 (log-softmax of the unprocessed logits),
    not those of the temperature/top-p sampling distribution. A PPO ratio
    computed against them is the ratio of the trained model itself; sample at
    temperature 1 and top_p 1 when the two must coincide.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device: str | None = None,
                 max_batch_size: int = 64, *, kv_reuse: bool = True, cache_budget_tokens: int = 32768):
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model if device is None else model.to(device)
        self.tokenizer = tokenizer
        self.max_batch_size = int(max_batch_size)
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(eos_ids)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.context_window: int | None = getattr(model.config, "max_position_embeddings", None)
        self.cache = EpisodeKVCache(cache_budget_tokens)
        self.kv_reuse = bool(kv_reuse)
        self._keeps_caches = self.kv_reuse and _full_attention_only(model)
        if self.kv_reuse and not self._keeps_caches:
            log.info("%s has sliding-window or non-attention layers; HFPolicy keeps no KV cache between turns",
                     type(model).__name__)
        self._cache_argument = _cache_argument(model)
        self._budget_checked = False
        self._weights_version = _weights_version(self.model)

    @classmethod
    def from_pretrained(cls, name: str, device: str | None = None, **kwargs) -> HFPolicy:
        """The policy over model `name` as `envgym.models.load_model` loads it (a checkpoint directory, "default"
        for the embedded SmolLM2, a tiny model or a hub id), on `device`; `kwargs` go to the constructor.
        ModelLoadError (one line) if it cannot be loaded; ModelNotFound, a FileNotFoundError, if it is none
        of these."""
        from envgym.models import load_model

        model, tokenizer = load_model(name, device=device)
        return cls(model, tokenizer, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- the episode-cache contract -------------------------------------------------------------------

    def release(self, cache_keys: Iterable[Hashable]) -> None:
        """Drop the caches of `cache_keys` (episodes that ended); unknown keys are ignored."""
        self.cache.drop(cache_keys)

    def copy_cache(self, source: Hashable, target: Hashable) -> None:
        """Start episode `target` (a branch of episode `source`) from `source`'s cache: its first prompt extends
        `source`'s context, so only its own tokens are prefilled."""
        if self._keeps_caches:
            self.cache.share(source, target)

    def weights_changed(self) -> None:
        """Drop every cache: the model's weights changed, so cached keys and values are stale."""
        self.cache.clear()
        self._weights_version = _weights_version(self.model)

    # -- generation -----------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 cache_keys: Sequence[Hashable] | None = None) -> list[Completion]:
        """One sampled completion per prompt; logprobs are the raw model's (see the class docstring).

        `cache_keys[i]` names the episode of `prompts[i]` (distinct within a
        call): its cache from earlier calls serves the prompt's shared prefix,
        and afterwards holds the prompt plus the completion. Without keys
        nothing is cached.
        """
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token; got an empty prompt")
        if cache_keys is not None:
            if len(cache_keys) != len(prompts):
                raise ValueError(f"got {len(prompts)} prompts but {len(cache_keys)} cache_keys; give one per prompt")
            if len(set(cache_keys)) != len(cache_keys):
                raise ValueError("cache_keys must be distinct within a call (one key per episode)")
        keys = list(cache_keys) if cache_keys is not None and self._keeps_caches else [None] * len(prompts)
        if any(k is not None for k in keys):
            self._check_budget(prompts, params)
        if _weights_version(self.model) != self._weights_version:
            self.weights_changed()
        completions: list[Completion | None] = [None] * len(prompts)
        by_room: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            room = params.max_new_tokens
            if self.context_window is not None:
                room = min(room, self.context_window - len(prompt))
            if room < 1:
                completions[i] = Completion([], [], "", "context")
            else:
                by_room.setdefault(room, []).append(i)
        for room, rows in by_room.items():
            clipped = room < params.max_new_tokens
            sub_params = dataclasses.replace(params, max_new_tokens=room) if clipped else params
            done = self._generate_rows([prompts[i] for i in rows], sub_params, [keys[i] for i in rows])
            for i, completion in zip(rows, done):
                if clipped and completion.finish_reason == "length":
                    completion = dataclasses.replace(completion, finish_reason="context")
                completions[i] = completion
        return completions

    def _check_budget(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> None:
        """On the first call with cache keys: the budget must hold at least one episode's prompt and completion."""
        if self._budget_checked:
            return
        self._budget_checked = True
        need = max(len(p) for p in prompts) + params.max_new_tokens
        if need > self.cache.budget_tokens:
            raise ValueError(f"cache_budget_tokens={self.cache.budget_tokens} cannot hold one episode: a prompt of "
                             f"{need - params.max_new_tokens} tokens plus max_new_tokens={params.max_new_tokens} "
                             f"needs {need}; set cache_budget_tokens >= {need} (or kv_reuse=False)")

    def _generate_rows(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                       keys: Sequence[Hashable | None]) -> list[Completion]:
        if not self.kv_reuse:
            completions: list[Completion] = []
            for start in range(0, len(prompts), self.max_batch_size):
                completions.extend(self._generate_batch(prompts[start:start + self.max_batch_size], params))
            return completions
        rows = []
        for prompt, key in zip(prompts, keys):
            prefix = self.cache.take(key) if key is not None else None
            rows.append(_Row(prompt, key, prefix, prefix.shared_prefix(prompt) if prefix is not None else 0))
        results: list[Completion | None] = [None] * len(rows)
        for bucket in self._buckets(rows, params):
            for i, completion in zip(bucket, self._decode([rows[i] for i in bucket], params)):
                results[i] = completion
        return results

    def _buckets(self, rows: list[_Row], params: SamplingParams) -> list[list[int]]:
        """Row indices in batches of similar `new_tokens`: a row joins unless padding the batch costs more than
        a separate decode pass would. Each batch keeps call order, so one batch draws what `model.generate` draws."""
        separate_pass = _PREFILL_TOKENS_PER_DECODE_STEP * params.max_new_tokens
        buckets: list[list[int]] = []
        widest = 0
        for i in sorted(range(len(rows)), key=lambda i: (rows[i].new_tokens, len(rows[i].prompt))):
            bucket = buckets[-1] if buckets else None
            if (bucket is None or len(bucket) >= self.max_batch_size
                    or len(bucket) * (rows[i].new_tokens - widest) > separate_pass):
                buckets.append([])
            buckets[-1].append(i)
            widest = rows[i].new_tokens
        return [sorted(bucket) for bucket in buckets]

    def _decode(self, rows: list[_Row], params: SamplingParams) -> list[Completion]:
        """Sample one batch: prefill what the caches lack, decode token by token, store the episodes' caches."""
        import torch

        batch = _Batch.lay_out(rows, self.pad_token_id, self.device)
        generated: list[list[int]] = [[] for _ in rows]
        logprobs: list[list[float]] = [[] for _ in rows]
        reasons = ["length"] * len(rows)
        finished = [False] * len(rows)
        forwards = 0  # decode steps fed back into the cache after the prefill
        with torch.inference_mode():
            logits = self._forward(batch.input_ids, batch.mask, batch.positions, batch.cache)
            for step in range(params.max_new_tokens):
                tokens = _pick(logits, params)
                chosen = logits.log_softmax(-1).gather(1, tokens[:, None]).squeeze(1)
                was_finished = torch.tensor(finished, device=tokens.device)
                for i, (token, logprob) in enumerate(zip(tokens.tolist(), chosen.tolist())):
                    if finished[i]:
                        continue
                    generated[i].append(token)
                    logprobs[i].append(logprob)
                    if token in self.eos_token_ids or self._hit_stop(generated[i], params):
                        finished[i], reasons[i] = True, "stop"
                if all(finished) or step == params.max_new_tokens - 1:
                    break
                # finished rows feed padding, as model.generate does; a row that just finished feeds its last token
                batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(rows), 1))], dim=1)
                batch.positions = batch.positions[:, -1:] + 1
                logits = self._forward(tokens.masked_fill(was_finished, self.pad_token_id)[:, None], batch.mask,
                                       batch.positions, batch.cache)
                forwards += 1
        for i, row in enumerate(rows):
            if row.key is not None:
                self.cache.put(row.key, batch.row_cache(i, [*row.prompt, *generated[i][:forwards]]))
        return [Completion(ids, lps, self.tokenizer.decode(ids, skip_special_tokens=True), reason,
                           cached_tokens=kept)
                for ids, lps, reason, kept in zip(generated, logprobs, reasons, batch.kept)]

    def _forward(self, input_ids, mask, positions, cache) -> torch.Tensor:
        """The float32 logits of each row's last position, extending `cache`."""
        import torch

        # the last position as an index tensor, not `logits_to_keep=1`: the slice `[:, -1:]` is a strided view,
        # and with a frozen output layer (LoRA) `matmul` then broadcasts the vocabulary matrix to every row, a copy
        # that made a CPU prefill of SmolLM2 3.6x slower (the last row of benchmarks/real_model.py)
        last = torch.tensor([input_ids.shape[1] - 1], device=input_ids.device)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=last, **{self._cache_argument: cache})
        return out.logits[:, -1].float()

    def _hit_stop(self, ids: list[int], params: SamplingParams) -> bool:
        return bool(params.stop) and any(s in self.tokenizer.decode(ids) for s in params.stop)

    def _generate_batch(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        """The `kv_reuse=False` path: `model.generate` on the prompts in full, left-padded."""
        import torch
        from transformers import GenerationConfig

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
            if token in self.eos_token_ids or self._hit_stop(ids[:i + 1], params):
                return i + 1, "stop"
        return len(ids), "length"

    # -- scoring --------------------------------------------------------------------------------------

    def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> list[list[float]]:
        """Teacher-forced log p(continuation token | prompt, earlier tokens) at temperature 1, without grad."""
        if len(prompts) != len(continuations):
            raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
        longest = max((len(p) + len(c) for p, c in zip(prompts, continuations)), default=0)
        if self.context_window is not None and longest > self.context_window:
            raise ValueError(f"a prompt plus continuation of {longest} tokens is longer than the model's context "
                             f"window of {self.context_window} positions")
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


def _pick(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The next token of each row: argmax at temperature 0, else a draw the way `model.generate` draws it
    (logits / temperature, top-p filter, softmax, `torch.multinomial`), so a seed gives the same tokens."""
    import torch

    if params.temperature == 0:
        return logits.argmax(dim=-1)
    scores = logits / params.temperature if params.temperature != 1.0 else logits
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - params.top_p
        drop[..., -1:] = False  # keep at least the most likely token
        scores = scores.masked_fill(drop.scatter(1, order, drop), -float("inf"))
    return torch.multinomial(scores.softmax(dim=-1), num_samples=1).squeeze(1)


def _cache_argument(model) -> str:
    """The keyword `forward` takes a `Cache` under: `cache` (transformers >= 5.2x) or `past_key_values` (earlier)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model passes it through
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _full_attention_only(model) -> bool:
    """Whether every layer keeps a plain growing KV cache (no sliding window, no linear attention)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


def _weights_version(model) -> tuple[tuple[int, int], ...]:
    """Changes whenever a parameter is modified in place through torch (its version counter) or replaced."""
    return tuple((id(p), p._version) for p in model.parameters())


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
