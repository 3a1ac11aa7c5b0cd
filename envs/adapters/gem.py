"""`gem:<id>`: a game of GEM (the `gem-llm` package) as an envgym env.

- task k of a split is a reset seed (`common.game_seed`); GEM's games have no task lists;
- `state_key` hashes the game object's attributes (board, secret, turn count), which is
  the whole state of GEM's self-contained games;
- a step is invalid when GEM scores it as a format error (its `format_error_reward`); GEM
  gives other invalid moves (a repeated guess) the same reward as a plain step, so they
  are not flagged;
- won: the episode ended with GEM's `success_reward`;
- `sample_action` is the game's own `sample_random_action`, drawn with the caller's rng, for the games
  whose sampler writes well-formed moves (not FifteenPuzzle's or Crosswords' in gem 0.1.0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envgym.envs.adapters.common import SeededGame, check_known, first_words, state_key

#: GEM's games that run offline, each with -easy, -hard and -random variants (FifteenPuzzle's -random fails
#: in gem 0.1.0; Sokoban-v0-hard takes seconds per reset); Game2048 also has -extreme-hard, Crosswords has no
#: working -random. The others call `nltk.download` (Wordle, Hangman, WordSearch) or `datasets.load_dataset`
#: (math:, qa:, code:).
OFFLINE_GAMES = ("game:GuessTheNumber-v0", "game:Mastermind-v0", "game:Minesweeper-v0", "game:FifteenPuzzle-v0",
                 "game:Sudoku-v0", "game:TowerofHanoi-v0", "game:Game2048-v0", "game:Sokoban-v0",
                 "game:Crosswords-v0")
#: The games whose `sample_random_action` writes moves GEM parses (`envgym check` tests each one).
SAMPLED_GAMES = ("game:GuessTheNumber-v0", "game:Mastermind-v0", "game:Minesweeper-v0", "game:Sudoku-v0",
                 "game:TowerofHanoi-v0", "game:Game2048-v0", "game:Sokoban-v0")
OFFLINE_HINT = ", ".join(f"{game}-easy" for game in OFFLINE_GAMES) + " (and -hard, -random)"


class GemEnv(SeededGame):
    """GEM env `env_id` (an id of `gem.envs.registration.ENV_REGISTRY`) made with `game_kwargs`."""

    instructions = ("You are playing a game from GEM. Its first message states the rules and how to write a move; "
                    "answer each message with your next move in exactly that format.")
    action_format = "a move in the game's own format, stated in its first message (e.g. \\boxed{42})"

    def __init__(self, env_id: str, **game_kwargs: Any):
        import gem
        from gem.envs.registration import ENV_REGISTRY
        from gem.utils.constants import LanguageGameReward

        check_known("GEM env", env_id, ENV_REGISTRY, f"games that run offline: {OFFLINE_HINT}")
        self.env_id, self.game_kwargs = env_id, dict(game_kwargs)
        super().__init__(f"gem:{env_id}|{sorted(game_kwargs.items())}")
        self._rewards = LanguageGameReward
        with self._random.active():
            try:
                self.game = gem.make(env_id, **game_kwargs)
            except Exception as exc:  # noqa: BLE001 - nltk data or a hub dataset it cannot fetch, a broken variant
                raise ValueError(f"GEM env {env_id!r} could not start ({type(exc).__name__}: {first_words(exc)}); "
                                 f"games that run offline: {OFFLINE_HINT}") from None

    def _observation(self, text: str, info: dict[str, Any]) -> str:
        suffix = info.get("suffix")
        return f"{text}\n{suffix}" if suffix and not text.rstrip().endswith(suffix) else text

    def _info(self, **extra: Any) -> dict[str, Any]:
        attributes = {k: v for k, v in vars(self.game).items() if not k.startswith("__")}
        return {"state_key": state_key(f"gem:{self.env_id}", attributes), "won": self.won, **extra}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        split, task = self.select_task(seed, options)
        self.won = False
        with self._random.active():
            text, info = self.game.reset(seed=self.game_seed(split, task))
        return self._observation(text, info), self._info()

    def step(self, action: str):
        action = self.check_action(action)
        with self._random.active():
            text, reward, terminated, truncated, info = self.game.step(action)
        reward = float(reward)
        self.won = bool(terminated) and reward >= self._rewards.success_reward
        return (self._observation(text, info), reward, bool(terminated), bool(truncated),
                self._info(invalid_action=reward == self._rewards.format_error_reward))

    def sample_action(self, rng: np.random.Generator) -> str:
        if not self.env_id.startswith(SAMPLED_GAMES):
            raise NotImplementedError(f"GEM's sampler of {self.env_id} writes moves the game refuses")
        with self._random.seeded(int(rng.integers(2**31))):
            return self.game.sample_random_action()
