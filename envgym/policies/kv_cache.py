"""`EpisodeKVCache`: each live episode's key/value tensors between its turns, within a budget of tokens.

An entry holds, for one cache key (one episode), the token ids whose keys and
values it stores and, per model layer, a `(keys, values)` pair of shape
`[1, kv_heads, len(ids), head_dim]`. The KV of a token depends only on the
tokens before it, so an entry serves any later prompt that shares a prefix
with its ids: the next turn of a full-history episode shares everything, a
fresh token row (window context, a template that rewrote history) shares its
common prefix (the system prompt), an unrelated prompt shares nothing.

Memory is bounded by `budget_tokens`, counted over all entries; storing past
it evicts the least recently used entries, whose episodes then prefill afresh.
One token costs `2 * layers * kv_heads * head_dim * dtype bytes` (SmolLM2-135M
in float32: 46 KB).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

LayerKV = list[tuple["torch.Tensor", "torch.Tensor"]]


@dataclass
class CachedPrefix:
    """The KV of the first `len(ids)` tokens of an episode's context."""

    ids: list[int]
    layers: LayerKV

    def __len__(self) -> int:
        return len(self.ids)

    def shared_prefix(self, prompt: Sequence[int]) -> int:
        """How many leading tokens of `prompt` this entry holds; at most `len(prompt) - 1`.

        The last prompt token is always recomputed: its logits pick the first sampled token.
        """
        limit = min(len(self.ids), len(prompt) - 1)
        n = 0
        while n < limit and self.ids[n] == prompt[n]:
            n += 1
        return n


class EpisodeKVCache:
    """Cached prefixes by key, least recently used first, at most `budget_tokens` tokens in all."""

    def __init__(self, budget_tokens: int):
        if budget_tokens < 1:
            raise ValueError(f"the cache budget must be >= 1 token, got {budget_tokens}")
        self.budget_tokens = int(budget_tokens)
        self._entries: OrderedDict[Hashable, CachedPrefix] = OrderedDict()
        self.tokens = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, key: Hashable) -> CachedPrefix | None:
        """Remove and return the entry of `key` (the caller puts back what it computes from it)."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.tokens -= len(entry)
        return entry

    def put(self, key: Hashable, entry: CachedPrefix) -> None:
        """Store `entry` as the newest; evicts the oldest entries (this one last) until the budget holds."""
        self.take(key)
        self._entries[key] = entry
        self.tokens += len(entry)
        while self.tokens > self.budget_tokens:
            _, evicted = self._entries.popitem(last=False)
            self.tokens -= len(evicted)
            self.evictions += 1

    def share(self, source: Hashable, target: Hashable) -> None:
        """Give `target` (a branch of episode `source`) `source`'s entry; the tensors are shared, not copied
        (generation only reads a cached prefix), but the budget counts them for each key."""
        entry = self.take(source)
        if entry is not None:
            self.put(source, entry)
            self.put(target, CachedPrefix(list(entry.ids), entry.layers))

    def drop(self, keys: Iterable[Hashable]) -> None:
        for key in keys:
            self.take(key)

    def clear(self) -> None:
        self._entries.clear()
        self.tokens = 0
