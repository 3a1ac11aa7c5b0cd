"""Turn-level trajectories: `Turn`, `Episode`, `Group`, and their JSONL/Parquet storage.

A turn keeps the exact tokens the policy saw and sampled: `obs_ids` are the
tokens added to the context before generation (the rendered observation and
generation prompt; for the first turn of a token row, the whole prompt), and
`action_ids` are the sampled ids verbatim. A token row of an episode is the
concatenation `obs_ids + action_ids` over a run of consecutive turns; the runs
start at `Episode.row_starts` (full-history context: one row, `(0,)`; window
context or a template that rewrites history: one row per turn). Only sampled
tokens train.

Text policies (scripted, random, an OpenAI endpoint) leave the token fields
empty; their episodes evaluate but carry nothing to train on. The trainer packs
groups into its batch type, `envgym.trainers.batch.RolloutBatch`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


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
    batched generation time. `prompt_tokens` and `completion_tokens` count the
    tokens of the prompt the action was written from and of the action: the
    context and `action_ids` of a token policy, the endpoint's reported usage
    of a text policy; None where nothing counted them (scripted and random
    play, an endpoint that reports no usage). `annotations` holds values computed after the
    rollout and stored with the turn for inspection (a trainer writes
    `advantage`, `intrinsic`, `anchor_size`, `new_logprobs`, `obs_tokens` and
    `action_tokens`: see `envgym.trainers.episode_log`); the rollout never
    reads them. `policy_version` is the version of the weights that sampled the
    action (a trainer's count of updates; None outside training): with
    asynchronous rollouts the weights may change between two turns of an episode.
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
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    annotations: dict[str, Any] = field(default_factory=dict)
    policy_version: int | None = None

    def __post_init__(self) -> None:
        if len(self.logprobs) != len(self.action_ids):
            raise ValueError(f"a turn needs one logprob per sampled id; got {len(self.action_ids)} ids and "
                             f"{len(self.logprobs)} logprobs")


@dataclass(frozen=True)
class Episode:
    """One trajectory: the turns played from `reset(seed, {"split": split, "task": task})` of `env_id`.

    A branch episode (`envgym.branching`) starts instead from the state before turn `branch_turn` of episode
    `parent` (its index in the group): its first turn's `obs_ids` are that state's whole prompt.
    """

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
    parent: int | None = None
    branch_turn: int | None = None

    def __post_init__(self) -> None:
        if (self.parent is None) != (self.branch_turn is None):
            raise ValueError("parent and branch_turn come together: a branch episode has both, a root neither")
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
        """Tokens the policy wrote: each turn's `completion_tokens`, else its `action_ids` (0 where neither)."""
        return sum(len(t.action_ids) if t.completion_tokens is None else t.completion_tokens for t in self.turns)

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
    """The episodes of one task and seed (a GRPO group): their first observations are identical. With branched
    collection the group's root episodes come first, then the branches (`Episode.parent`)."""

    env_id: str
    split: str
    task: int
    seed: int
    episodes: tuple[Episode, ...]

    def anchor_sizes(self) -> list[list[int]]:
        """Per episode, per turn: how many turns of this group act from the same `state_key` (itself included).

        This is the size of the turn's GiGPO anchor bucket with exact keys (loops within an episode count);
        1 means the state occurs nowhere else in the group, so GiGPO's step-level advantage is 0 there.
        """
        counts = Counter(t.state_key for e in self.episodes for t in e.turns)
        return [[counts[t.state_key] for t in e.turns] for e in self.episodes]

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
            "final_observation": e.final_observation, "parent": e.parent, "branch_turn": e.branch_turn,
            "turns": [_turn_dict(t) for t in e.turns]}


_TURN_SEQUENCES = ("obs_ids", "action_ids", "logprobs")


def _turn_dict(t: Turn) -> dict[str, Any]:
    return {"observation": t.observation, "action": t.action, "reward": t.reward, "state_key": t.state_key,
            "invalid_action": t.invalid_action, "finish": t.finish.value, "obs_ids": list(t.obs_ids),
            "action_ids": list(t.action_ids), "logprobs": list(t.logprobs), "env_time": t.env_time,
            "model_time": t.model_time, "prompt_tokens": t.prompt_tokens, "completion_tokens": t.completion_tokens,
            "annotations": t.annotations, "policy_version": t.policy_version}


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
_EPISODE_COLUMNS = ("end", "won", "answer", "final_observation", "parent", "branch_turn")


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
        ("parent", pa.int64()), ("branch_turn", pa.int64()),
        ("observation", pa.string()), ("action", pa.string()), ("reward", pa.float64()),
        ("state_key", pa.string()), ("invalid_action", pa.bool_()), ("finish", pa.string()),
        ("obs_ids", pa.list_(pa.int64())), ("action_ids", pa.list_(pa.int64())),
        ("logprobs", pa.list_(pa.float64())), ("env_time", pa.float64()), ("model_time", pa.float64()),
        ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()),
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
            row["episode"], {k: row[k] for k in (*_GROUP_COLUMNS, *_EPISODE_COLUMNS) if k in row}
            | {"turns": [], "row_starts": []})
        if row["row_start"]:
            episode["row_starts"].append(row["turn"])
        # files written before a turn field existed lack its column: the field keeps its default
        episode["turns"].append({k: row[k] for k in turn_keys if k in row}
                                | {"annotations": json.loads(row["annotations"])})
    return [Group.from_dict({**g, "episodes": [g["episodes"][i] for i in sorted(g["episodes"])]})
            for _, g in sorted(groups.items())]
