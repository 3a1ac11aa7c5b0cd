"""TextWorld games as envgym envs, driven through `textworld.start` directly.

Families: TextWorld's challenges (Coin Collector and Treasure Hunter, one row
each of `LEVELLED_CHALLENGES`; Cooking; Simple) and `Custom` (`textworld.generator.make_game` with rooms, objects and
quest length as knobs). Each task is a real game generated offline and cached on
disk (see `games`); the started game is reused, and only `reset`, when the next
task is the same game.

Tasks and splits: task k of the train split is the game of seed 2k, of the
test split the game of seed 2k+1, so the two seed sets are disjoint by
construction and a task is a pure function of (family, difficulty, split, k).
Different seeds give different games (room names, objects and quests are all
drawn from the seed) except by a coincidence that the families' randomness
makes negligible; Cooking and Simple also use TextWorld's own held-out settings
for test (Cooking's test foods and preparations, Simple's test food names).
Key the tasks by seed, not by content: content would need each game generated,
seconds apiece.

`info`: `admissible_actions` (TextWorld's admissible commands), `score`,
`max_score`, `won`, `lost`, `state_key` (a hash of the sorted world facts,
so two routes to the same world state share it), and at reset `walkthrough`.
An action that is not an admissible command is still sent to the game, whose
own reply ("That's not a verb I recognise.") comes back with
`invalid_action=True`. Reward: the score gained this turn plus `win_bonus` on
winning; with `sparse=True`, only 1.0 on winning.
"""

from __future__ import annotations

import copy
import hashlib
import re
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

from envgym.core import Env

_ART = frozenset(" _|\\/$<>()'`,.-=:;")
_STATUS_LINE = re.compile(r"^>.*$", re.MULTILINE)  # the prompt, followed by Inform 7's status bar
_END_PROMPT = re.compile(r"\n*Would you like to RESTART, RESTORE a saved game, QUIT or UNDO the last command\?\s*$")
_BLANK_LINES = re.compile(r"\n{3,}")
_INDENT = re.compile(r"^ +", re.MULTILINE)
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
MAX_COMMAND_CHARS = 190  # Jericho truncates commands at 198 bytes
SHARED_KNOBS = {
    "sparse": "reward only the outcome: 1.0 on winning, else 0 (default False: score gained + win bonus)",
    "win_bonus": "reward added on winning when not sparse (default 1.0)",
}


def clean_feedback(text: str) -> str:
    """The game's text without the ASCII-art banner, the status bar, the end-of-game menu and runs of blank lines."""
    lines = text.split("\n")
    start = 0
    while start < len(lines) and set(lines[start]) <= _ART and "-=" not in lines[start]:
        start += 1
    text = "\n".join(lines[start:])
    text = _END_PROMPT.sub("", _STATUS_LINE.sub("", text).rstrip())
    return _BLANK_LINES.sub("\n\n", _INDENT.sub("", text)).strip()


#: Measured on CoinCollector (2-core CPU, busy): the engine copy costs 130-220 ms at any length, a replay
#: 60-85 ms after 6 steps and 190-290 ms after 24 (a reset and the steps again).
COPY_AFTER_STEPS = 20


class TextWorldEnv(Env):
    """Base of the TextWorld families; a subclass names its family and says how to make a game."""

    family: ClassVar[str]
    reset_options = ()

    def __init__(self, sparse: bool = False, win_bonus: float = 1.0):
        try:
            import textworld
            from envgym.envs.textworld import games
        except ImportError as exc:
            raise ImportError(
                f"{type(self).__name__} needs the TextWorld package: pip install 'envgym[textworld]' ({exc})"
            ) from exc
        self._textworld, self._games = textworld, games
        self.sparse, self.win_bonus = bool(sparse), float(win_bonus)
        self.num_tasks = {"train": 100_000, "test": 10_000}
        self.action_format = "one text command, e.g. 'go north', 'take coin', 'open door'"
        self._requested = textworld.EnvInfos(admissible_commands=True, score=True, max_score=True, won=True,
                                             lost=True)
        self._game_env: Any = None
        self._path: str | None = None
        self._fact_names: dict[Any, str] = {}
        self._state: Any = None
        self._actions_taken: list[Any] = []
        self._walkthrough: list[str] = []
        self._walkthrough_position: int | None = 0
        self.instructions = (
            "You play a text adventure. Read what the game says and reply with one command per turn, "
            "such as 'go north', 'open door', 'take key', 'unlock chest with key', 'put coin in box', "
            "'look' or 'inventory'. " + self.goal
        )

    # --- what a family says ---------------------------------------------------------------------------------------
    goal: ClassVar[str] = "Follow the objective the game gives you."

    def settings(self, split: str) -> dict[str, Any]:
        """The difficulty settings of the game of `split` (they name its cache folder)."""
        raise NotImplementedError

    def game_maker(self, split: str):
        """A `make(options) -> textworld.Game` for `split`."""
        raise NotImplementedError

    # --- tasks ------------------------------------------------------------------------------------------------------
    @staticmethod
    def task_seed_of(split: str, index: int) -> int:
        """Train task k is the game of seed 2k, test task k of seed 2k+1: disjoint by construction."""
        return 2 * index + (split == "test")

    def task_key(self, split: str, index: int) -> str:
        settings = self._games._slug(self.settings(split))
        return f"textworld|{self.family}|{settings}|seed={self.task_seed_of(split, index)}"

    def game_path(self, split: str, index: int) -> str:
        """The compiled game of task `index` of `split` (generated and cached on first use)."""
        return str(self._games.game_file(self.family, self.settings(split), self.task_seed_of(split, index),
                                         self.game_maker(split)))

    # --- the envgym contract ----------------------------------------------------------------------------------------
    def _state_key(self) -> str:
        names = []
        cache = self._fact_names
        for fact in self._state["_facts"]:
            name = cache.get(fact)
            if name is None:
                name = cache[fact] = str(fact)
            names.append(name)
        names.sort()
        return hashlib.blake2b("\n".join(names).encode(), digest_size=12).hexdigest()

    def _info(self, **extra: Any) -> dict[str, Any]:
        s = self._state
        return {"state_key": self._state_key(), "admissible_actions": s["admissible_commands"],
                "score": s["score"], "max_score": s["max_score"], "won": bool(s["won"]), "lost": bool(s["lost"]),
                **extra}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        split, task = self.select_task(seed, options)
        path = self.game_path(split, task)
        if path != self._path:
            self.close()
            with warnings.catch_warnings():  # Jericho does not know TextWorld's games; TextWorld tracks score itself
                warnings.simplefilter("ignore")
                self._game_env = self._textworld.start(path, self._requested)
            self._path = path
            self._fact_names = {}
        self._state = self._game_env.reset()
        self._actions_taken = []
        self._walkthrough = list(self._state["game"].walkthrough or [])
        self._walkthrough_position = 0
        return clean_feedback(self._state["feedback"]), self._info(walkthrough=list(self._walkthrough))

    def step(self, action: str):
        action = self.check_action(action)
        command = " ".join(_UNPRINTABLE.sub(" ", action[: 4 * MAX_COMMAND_CHARS]).split())[:MAX_COMMAND_CHARS].lower()
        if not command:
            return "Please type a command.", 0.0, False, False, self._info(invalid_action=True)
        valid = command in self._state["admissible_commands"]
        old_score = self._state["score"] or 0
        self._state, score, done = self._game_env.step(command)
        if valid:
            self._actions_taken.append(self._state["_last_action"])
            position = self._walkthrough_position
            on_track = position is not None and position < len(self._walkthrough) \
                and command == self._walkthrough[position]
            self._walkthrough_position = position + 1 if on_track else None
        won = bool(self._state["won"])
        if self.sparse:
            reward = 1.0 if won else 0.0
        else:
            reward = float((score or 0) - old_score) + (self.win_bonus if won else 0.0)
        return clean_feedback(self._state["feedback"]), reward, bool(done), False, self._info(invalid_action=not valid)

    def fork(self) -> TextWorldEnv:
        """A replay of a short episode; past `COPY_AFTER_STEPS` steps, the engine's own copy of the running game
        (TextWorld's `copy` of the interpreter state), whose cost does not grow with the episode."""
        if self._game_env is None or self._replay is None or len(self._replay.steps) < COPY_AFTER_STEPS:
            return self.fork_by_replay()
        twin = copy.copy(self)
        twin._game_env = self._game_env.copy()
        twin._actions_taken, twin._walkthrough = list(self._actions_taken), list(self._walkthrough)
        twin._np_random, twin._replay = copy.deepcopy(self._np_random), copy.deepcopy(self._replay)
        return twin

    def oracle_action(self) -> str:
        """The walkthrough's next command while the agent follows it; otherwise TextWorld's winning policy
        from the current state (replayed from the actions taken)."""
        position = self._walkthrough_position
        if position is not None and position < len(self._walkthrough):
            return self._walkthrough[position]
        from textworld.generator.game import GameProgression
        from textworld.generator.inform7 import Inform7Game

        game = self._state["game"]
        progression = GameProgression(game, track_quests=True)
        for taken in self._actions_taken:
            if taken is not None:
                progression.update(taken)
        policy = progression.winning_policy
        if not policy:
            raise RuntimeError("the game can no longer be won from this state; reset it")
        return Inform7Game(game).gen_commands_from_actions(policy[:1])[0]

    def close(self) -> None:
        if self._game_env is not None:
            self._game_env.close()
            self._game_env, self._path = None, None


@dataclass(frozen=True)
class LevelledChallenge:
    """A TextWorld challenge whose one difficulty knob is `level`, from 1 to `highest`."""

    name: str  # of its env class here and of its id, textworld/{name}-v0
    textworld_challenge: str  # the challenge's name in TextWorld
    goal: str
    default_level: int
    highest: int
    levels: str  # what the level sets
    max_turns: int
    description: str  # the registered one-line description


#: The level-only challenges by family: each has a `LevelledEnv` subclass below, named as `name` says, and the
#: package registers every row.
LEVELLED_CHALLENGES = {
    "coin_collector": LevelledChallenge(
        "CoinCollector", "tw-coin_collector", goal="Find the coin and take it.", default_level=3, highest=300,
        levels="quest length (level-1) % 100 + 1; above 100, distractor rooms (2x rooms at 101-200, 3x at 201-300)",
        max_turns=25, description="TextWorld Coin Collector (level 3): find the coin along a chain of rooms."),
    "treasure_hunter": LevelledChallenge(
        "TreasureHunter", "tw-treasure_hunter",
        goal="Find the object the game names and take it, without touching the wrong one.", default_level=1,
        highest=30, levels="1-10 easy (5 rooms, quest 1-5), 11-20 medium (10 rooms, doors and containers), "
                           "21-30 hard (20 rooms, locked doors and keys)",
        max_turns=30, description="TextWorld Treasure Hunter (level 1): find and take the named object in a 5-room "
                                  "house."),
}


class LevelledEnv(TextWorldEnv):
    """The game of a `LEVELLED_CHALLENGES` family at `level`. A subclass names its family
    (``class X(LevelledEnv, family="...")``) and takes the level with the challenge's default."""

    challenge: ClassVar[LevelledChallenge]

    def __init_subclass__(cls, family: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.family, cls.challenge = family, LEVELLED_CHALLENGES[family]
        cls.goal = cls.challenge.goal
        cls.knobs = {"level": f"1-{cls.challenge.highest} (default {cls.challenge.default_level}): "
                              f"{cls.challenge.levels}", **SHARED_KNOBS}

    def __init__(self, level: int, **kwargs: Any):
        if not 1 <= level <= self.challenge.highest:
            raise ValueError(f"level must be in [1, {self.challenge.highest}], got {level}")
        self.level = int(level)
        super().__init__(**kwargs)

    def settings(self, split: str) -> dict[str, Any]:
        return {"level": self.level}

    def game_maker(self, split: str):
        return self._games.challenge(self.challenge.textworld_challenge, self.settings(split))


class CoinCollector(LevelledEnv, family="coin_collector"):
    def __init__(self, level: int = LEVELLED_CHALLENGES["coin_collector"].default_level, **kwargs: Any):
        super().__init__(level, **kwargs)


class TreasureHunter(LevelledEnv, family="treasure_hunter"):
    def __init__(self, level: int = LEVELLED_CHALLENGES["treasure_hunter"].default_level, **kwargs: Any):
        super().__init__(level, **kwargs)


class Cooking(TextWorldEnv):
    family = "cooking"
    goal = "Read the cookbook, gather and prepare the ingredients, then prepare and eat the meal."
    knobs = {
        "recipe": "ingredients in the recipe (default 1, up to 5)",
        "take": "ingredients to find (default 1, at most `recipe`)",
        "go": "rooms in the house: 1, 6, 9 or 12 (default 1)",
        "open": "containers and doors must be opened (default False)",
        "cook": "ingredients must be cooked (default False)",
        "cut": "ingredients must be cut (default False)",
        "drop": "the inventory is limited (default False)",
        **SHARED_KNOBS,
    }

    def __init__(self, recipe: int = 1, take: int = 1, go: int = 1, open: bool = False, cook: bool = False,
                 cut: bool = False, drop: bool = False, **kwargs: Any):
        if go not in (1, 6, 9, 12):
            raise ValueError(f"go must be 1, 6, 9 or 12 rooms, got {go}")
        if not 1 <= recipe <= 5 or not 0 <= take <= recipe:
            raise ValueError(f"need 1 <= recipe <= 5 and 0 <= take <= recipe, got recipe={recipe}, take={take}")
        self.recipe, self.take, self.go = int(recipe), int(take), int(go)
        self.open, self.cook, self.cut, self.drop = bool(open), bool(cook), bool(cut), bool(drop)
        super().__init__(**kwargs)

    def settings(self, split: str) -> dict[str, Any]:
        skills = {k: getattr(self, k) for k in ("recipe", "take", "go", "open", "cook", "cut", "drop")}
        return {**skills, "recipe_seed": 0, "split": split}  # TextWorld's own held-out foods for test

    def game_maker(self, split: str):
        return self._games.challenge("tw-cooking", self.settings(split))


class Simple(TextWorldEnv):
    family = "simple"
    goal = "Follow the objective the game gives you."
    knobs = {
        "rewards": "'dense', 'balanced' or 'sparse' (default 'dense'): how many subgoals score points",
        "goal_description": "'detailed', 'brief' or 'none' (default 'detailed'): how much of the goal is told",
        **SHARED_KNOBS,
    }

    def __init__(self, rewards: str = "dense", goal_description: str = "detailed", **kwargs: Any):
        if rewards not in ("dense", "balanced", "sparse"):
            raise ValueError(f"rewards must be 'dense', 'balanced' or 'sparse', got {rewards!r}")
        if goal_description not in ("detailed", "brief", "none"):
            raise ValueError(f"goal_description must be 'detailed', 'brief' or 'none', got {goal_description!r}")
        self.rewards, self.goal_description = rewards, goal_description
        super().__init__(**kwargs)

    def settings(self, split: str) -> dict[str, Any]:
        return {"rewards": self.rewards, "goal": self.goal_description, "test": split == "test"}

    def game_maker(self, split: str):
        return self._games.challenge("tw-simple", self.settings(split))


class Custom(TextWorldEnv):
    family = "custom"
    goal = "Follow the objective the game gives you."
    knobs = {
        "nb_rooms": "rooms in the world (default 3)",
        "nb_objects": "objects placed in the world besides the quest's (default 5)",
        "quest_length": "actions the shortest winning walkthrough needs (default 3)",
        **SHARED_KNOBS,
    }

    def __init__(self, nb_rooms: int = 3, nb_objects: int = 5, quest_length: int = 3, **kwargs: Any):
        if nb_rooms < 1 or nb_objects < 0 or quest_length < 1:
            raise ValueError(f"need nb_rooms >= 1, nb_objects >= 0, quest_length >= 1; got {nb_rooms}, "
                             f"{nb_objects}, {quest_length}")
        self.nb_rooms, self.nb_objects, self.quest_length = int(nb_rooms), int(nb_objects), int(quest_length)
        super().__init__(**kwargs)

    def settings(self, split: str) -> dict[str, Any]:
        return {"nb_rooms": self.nb_rooms, "nb_objects": self.nb_objects, "quest_length": self.quest_length}

    def game_maker(self, split: str):
        return self._games.custom(self.nb_rooms, self.nb_objects, self.quest_length)
