"""Turn-level trajectories: `Turn`, `Episode`, `Group`, their token rows, and JSONL/Parquet storage.

A turn keeps the exact tokens the policy saw and sampled: `obs_ids` are the
tokens added to the context before generation (the rendered observation and
generation prompt; for the first turn of a token row, the whole prompt), and
`action_ids` are the sampled ids verbatim. A token row of an episode is the
concatenation `obs_ids + action_ids` over a run of consecutive turns; the runs
start at `Episode.row_starts` (full-history context: one row, `(0,)`; window
context or a template that rewrites history: one row per turn). Only sampled
tokens train.

Text policies (scripted, random, an OpenAI endpoint) leave the token fields
empty; their episodes evaluate but carry nothing to train on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envgym.core import stable_hash

if TYPE_CHECKING:
    import torch

    from envgym.trainers.advantages import TurnBatch


class FinishReason(str, Enum):
    """Why a policy stopped writing an action."""

    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # hit max_new_tokens: the action may be cut off
    EMPTY = "empty"  # stopped before writing any text
    CONTEXT = "context"  # prompt and action filled the model's context window: the action may be cut off


class EpisodeEnd(str, Enum):
    """Why an episode ended."""

    TERMINATED = "terminated"  # the env reached a terminal state (won or lost)
    TRUNCATED = "truncated"  # the env cut the episode (its turn limit)
    MAX_TURNS = "max_turns"  # the rollout's own max_turns
    CONTEXT = "context"  # the model's context window is full


@dataclass(frozen=True)
class Turn:
    """One observation -> action -> reward step of an episode.

    `state_key` names the env state the action was taken from (the anchor
    state of GiGPO). `env_time` is the seconds the env took to produce the
    observation this turn acted on (reset for turn 0, the previous step
    otherwise) plus this step; `model_time` is this turn's share of the
    batched generation time. `annotations` holds values computed after the
    rollout and stored with the turn for inspection (a trainer writes
    `advantage`, `intrinsic`, `anchor_size`, `new_logprobs`, `tokens`; an
    evaluation writes what it measured); the rollout never reads them.
    """

    observation: str
    action: str
    reward: float
    state_key: str
    invalid_action: bool
    finish: FinishReason = FinishReason.STOP
    obs_ids: tuple[int, ...] = ()
    action_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()
    env_time: float = 0.0
    model_time: float = 0.0
    annotations: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.logprobs) != len(self.action_ids):
            raise ValueError(f"a turn needs one logprob per sampled id; got {len(self.action_ids)} ids and "
                             f"{len(self.logprobs)} logprobs")


@dataclass(frozen=True)
class Episode:
    """One trajectory: the turns played from `reset(seed, {"split": split, "task": task})` of `env_id`."""

    env_id: str
    split: str
    task: int
    seed: int
    turns: tuple[Turn, ...]
    end: EpisodeEnd
    won: bool = False
    row_starts: tuple[int, ...] = (0,)
    answer: str | None = None
    final_observation: str = ""

    def __post_init__(self) -> None:
        if not self.turns:
            raise ValueError("an episode has at least one turn")
        starts = self.row_starts
        if not starts or starts[0] != 0 or list(starts) != sorted(set(starts)) or starts[-1] >= len(self.turns):
            raise ValueError(f"row_starts must be increasing turn indices starting at 0 and below "
                             f"{len(self.turns)}, got {starts}")

    @property
    def total_return(self) -> float:
        return float(sum(t.reward for t in self.turns))

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(t.action_ids) for t in self.turns)

    def rows(self) -> list[range]:
        """The turn indices of each token row, in order."""
        bounds = [*self.row_starts, len(self.turns)]
        return [range(a, b) for a, b in zip(bounds, bounds[1:])]

    def row_ids(self, row: int, upto_turn: int | None = None) -> list[int]:
        """The token ids of row `row`, optionally only up to (excluding) the action of turn `upto_turn`."""
        ids: list[int] = []
        for t in self.rows()[row]:
            ids.extend(self.turns[t].obs_ids)
            if upto_turn is not None and t == upto_turn:
                break
            ids.extend(self.turns[t].action_ids)
        return ids


@dataclass(frozen=True)
class Group:
    """The episodes of one task and seed (a GRPO group): their first observations are identical."""

    env_id: str
    split: str
    task: int
    seed: int
    episodes: tuple[Episode, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; `Group.from_dict` inverts it exactly."""
        return {
            "env_id": self.env_id, "split": self.split, "task": self.task, "seed": self.seed,
            "episodes": [_episode_dict(e) for e in self.episodes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Group:
        episodes = tuple(
            Episode(**{**e, "end": EpisodeEnd(e["end"]), "row_starts": tuple(e["row_starts"]),
                       "turns": tuple(_turn_from_dict(t) for t in e["turns"])})
            for e in data["episodes"])
        return cls(data["env_id"], data["split"], data["task"], data["seed"], episodes)


def _episode_dict(e: Episode) -> dict[str, Any]:
    return {"env_id": e.env_id, "split": e.split, "task": e.task, "seed": e.seed, "end": e.end.value,
            "won": e.won, "row_starts": list(e.row_starts), "answer": e.answer,
            "final_observation": e.final_observation, "turns": [_turn_dict(t) for t in e.turns]}


_TURN_SEQUENCES = ("obs_ids", "action_ids", "logprobs")


def _turn_dict(t: Turn) -> dict[str, Any]:
    return {"observation": t.observation, "action": t.action, "reward": t.reward, "state_key": t.state_key,
            "invalid_action": t.invalid_action, "finish": t.finish.value, "obs_ids": list(t.obs_ids),
            "action_ids": list(t.action_ids), "logprobs": list(t.logprobs), "env_time": t.env_time,
            "model_time": t.model_time, "annotations": t.annotations}


def _turn_from_dict(d: dict[str, Any]) -> Turn:
    return Turn(**{**d, "finish": FinishReason(d["finish"]), "annotations": d.get("annotations") or {},
                   **{k: tuple(d[k]) for k in _TURN_SEQUENCES}})


# ---------------------------------------------------------------------------------------------- storage

def save_groups(path: str | Path, groups: Iterable[Group]) -> Path:
    """Write groups to `path`: JSON Lines (one group per line) or, for a `.parquet` path, one row per turn.

    Both round-trip exactly (floats are written with full precision).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        _save_parquet(path, list(groups))
    else:
        with path.open("w", encoding="utf-8") as f:
            for group in groups:
                f.write(json.dumps(group.to_dict(), ensure_ascii=False) + "\n")
    return path


def load_groups(path: str | Path) -> list[Group]:
    """Read groups written by `save_groups` (the format follows the suffix)."""
    path = Path(path)
    if path.suffix == ".parquet":
        return _load_parquet(path)
    groups = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    groups.append(Group.from_dict(json.loads(line)))
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"{path}:{number}: not a saved envgym group ({type(exc).__name__}: {exc})") \
                        from exc
    return groups


_GROUP_COLUMNS = ("env_id", "split", "task", "seed")
_EPISODE_COLUMNS = ("end", "won", "answer", "final_observation")


def _save_parquet(path: Path, groups: list[Group]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("saving Parquet needs pyarrow: pip install 'envgym[parquet]' (or save to .jsonl)") from exc
    rows = []
    for g_index, group in enumerate(groups):
        for e_index, episode in enumerate(group.episodes):
            episode_fields = _episode_dict(episode)
            for t_index, turn in enumerate(episode.turns):
                rows.append({"group": g_index, "episode": e_index, "turn": t_index,
                             "row_start": t_index in episode.row_starts,
                             **{k: getattr(group, k) for k in _GROUP_COLUMNS},
                             **{k: episode_fields[k] for k in _EPISODE_COLUMNS}, **_turn_dict(turn),
                             "annotations": json.dumps(turn.annotations)})
    schema = pa.schema([
        ("group", pa.int64()), ("episode", pa.int64()), ("turn", pa.int64()), ("row_start", pa.bool_()),
        ("env_id", pa.string()), ("split", pa.string()), ("task", pa.int64()), ("seed", pa.int64()),
        ("end", pa.string()), ("won", pa.bool_()), ("answer", pa.string()), ("final_observation", pa.string()),
        ("observation", pa.string()), ("action", pa.string()), ("reward", pa.float64()),
        ("state_key", pa.string()), ("invalid_action", pa.bool_()), ("finish", pa.string()),
        ("obs_ids", pa.list_(pa.int64())), ("action_ids", pa.list_(pa.int64())),
        ("logprobs", pa.list_(pa.float64())), ("env_time", pa.float64()), ("model_time", pa.float64()),
        ("annotations", pa.string()),  # JSON: its values vary by writer
    ])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def _load_parquet(path: Path) -> list[Group]:
    import pyarrow.parquet as pq

    groups: dict[int, dict[str, Any]] = {}
    turn_keys = set(_turn_dict(Turn("", "", 0.0, "", False)))
    for row in pq.read_table(path).to_pylist():
        group = groups.setdefault(row["group"], {k: row[k] for k in _GROUP_COLUMNS} | {"episodes": {}})
        episode = group["episodes"].setdefault(
            row["episode"], {k: row[k] for k in (*_GROUP_COLUMNS, *_EPISODE_COLUMNS)} | {"turns": [], "row_starts": []})
        if row["row_start"]:
            episode["row_starts"].append(row["turn"])
        episode["turns"].append({k: row[k] for k in turn_keys} | {"annotations": json.loads(row["annotations"])})
    return [Group.from_dict({**g, "episodes": [g["episodes"][i] for i in sorted(g["episodes"])]})
            for _, g in sorted(groups.items())]


# ---------------------------------------------------------------------------------------------- training views

@dataclass(frozen=True)
class TokenBatch:
    """Right-padded tensors of some token rows, shape [B, T] each.

    `loss_mask` is True only on sampled tokens; `old_logprobs` holds the
    rollout's logprobs there (0 elsewhere); `token_turn` is the global turn
    index (into `to_turn_batch`'s turns) of each sampled token, -1 elsewhere
    (prompt tokens and padding); `rows` are the indices into `TokenRows`.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    old_logprobs: torch.Tensor
    token_turn: torch.Tensor
    rows: tuple[int, ...]


@dataclass(frozen=True)
class TokenRows:
    """The token rows of some groups, in the order of `to_turn_batch`'s turns (see TokenBatch for fields)."""

    input_ids: tuple[tuple[int, ...], ...]
    loss_mask: tuple[tuple[bool, ...], ...]
    old_logprobs: tuple[tuple[float, ...], ...]
    token_turn: tuple[tuple[int, ...], ...]
    pad_token_id: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_tokens(self) -> int:
        return sum(len(r) for r in self.input_ids)

    def batches(self, max_tokens: int) -> Iterator[TokenBatch]:
        """Consecutive rows collated so that rows x longest row <= `max_tokens` (a longer row goes alone)."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        chosen: list[int] = []
        width = 0
        for i, row in enumerate(self.input_ids):
            if chosen and (len(chosen) + 1) * max(width, len(row)) > max_tokens:
                yield self._collate(chosen)
                chosen, width = [], 0
            chosen.append(i)
            width = max(width, len(row))
        if chosen:
            yield self._collate(chosen)

    def _collate(self, rows: list[int]) -> TokenBatch:
        import torch

        width = max(len(self.input_ids[i]) for i in rows)

        def padded(values, fill, dtype):
            out = torch.full((len(rows), width), fill, dtype=dtype)
            for b, i in enumerate(rows):
                out[b, : len(values[i])] = torch.tensor(values[i], dtype=dtype)
            return out

        lengths = torch.tensor([len(self.input_ids[i]) for i in rows])
        return TokenBatch(
            input_ids=padded(self.input_ids, self.pad_token_id, torch.long),
            attention_mask=(torch.arange(width)[None, :] < lengths[:, None]).long(),
            loss_mask=padded(self.loss_mask, False, torch.bool),
            old_logprobs=padded(self.old_logprobs, 0.0, torch.float32),
            token_turn=padded(self.token_turn, -1, torch.long),
            rows=tuple(rows),
        )


def _iter_turns(groups: Sequence[Group]) -> Iterator[tuple[int, int, int, Episode, Turn]]:
    """(group index, global episode index, turn index, episode, turn) in packed order."""
    episode_index = 0
    for g, group in enumerate(groups):
        for episode in group.episodes:
            for t, turn in enumerate(episode.turns):
                yield g, episode_index, t, episode, turn
            episode_index += 1


def _rows_with_turns(groups: Sequence[Group]) -> Iterator[list[tuple[int, Turn]]]:
    """Each token row as a list of (global turn index, turn)."""
    offset = 0
    for group in groups:
        for episode in group.episodes:
            for row in episode.rows():
                yield [(offset + t, episode.turns[t]) for t in row]
            offset += len(episode.turns)


def to_token_rows(groups: Sequence[Group], pad_token_id: int = 0) -> TokenRows:
    """The token rows of `groups` with loss masks on the sampled tokens only.

    Raises ValueError if a turn has no sampled ids (episodes of a text policy cannot train).
    """
    input_ids, loss_mask, old_logprobs, token_turn = [], [], [], []
    for row in _rows_with_turns(groups):
        ids: list[int] = []
        mask: list[bool] = []
        logprobs: list[float] = []
        owner: list[int] = []
        for global_turn, turn in row:
            if not turn.action_ids:
                raise ValueError(f"turn {global_turn} has no sampled token ids (action {turn.action[:40]!r}); "
                                 "only episodes of a token policy (hf, vllm) can be turned into token rows")
            ids += [*turn.obs_ids, *turn.action_ids]
            mask += [False] * len(turn.obs_ids) + [True] * len(turn.action_ids)
            logprobs += [0.0] * len(turn.obs_ids) + list(turn.logprobs)
            owner += [-1] * len(turn.obs_ids) + [global_turn] * len(turn.action_ids)
        input_ids.append(tuple(ids))
        loss_mask.append(tuple(mask))
        old_logprobs.append(tuple(logprobs))
        token_turn.append(tuple(owner))
    return TokenRows(tuple(input_ids), tuple(loss_mask), tuple(old_logprobs), tuple(token_turn), pad_token_id)


def to_turn_batch(groups: Sequence[Group], *, intrinsic: Sequence[float] | None = None,
                  with_tokens: bool = True) -> TurnBatch:
    """The packed turn layout of ALGORITHMS.md for `groups`, in the order of `to_token_rows`.

    Group ids are positions in `groups`, episode ids count episodes in order,
    `state` is `envgym.stable_hash(turn.state_key)`. With `with_tokens`, the
    token fields cover the concatenated rows of `to_token_rows(groups)`: there
    `token_turn` is the turn each token belongs to (prompt tokens belong to the
    turn they were added in) and `loss_mask` marks the sampled ones.
    """
    from envgym.trainers.advantages import TurnBatch

    group, episode, reward, state, invalid = [], [], [], [], []
    for g, e, _, _, turn in _iter_turns(groups):
        group.append(g)
        episode.append(e)
        reward.append(turn.reward)
        state.append(stable_hash(turn.state_key))
        invalid.append(turn.invalid_action)
    if intrinsic is not None and len(intrinsic) != len(reward):
        raise ValueError(f"intrinsic has {len(intrinsic)} values but the groups have {len(reward)} turns")
    token_turn = loss_mask = None
    if with_tokens:
        token_turn, loss_mask = [], []
        for row in _rows_with_turns(groups):
            for global_turn, turn in row:
                token_turn += [global_turn] * (len(turn.obs_ids) + len(turn.action_ids))
                loss_mask += [False] * len(turn.obs_ids) + [True] * len(turn.action_ids)
    return TurnBatch.from_lists(group=group, episode=episode, reward=reward, state=state, intrinsic=intrinsic,
                                invalid=invalid, token_turn=token_turn, loss_mask=loss_mask)
