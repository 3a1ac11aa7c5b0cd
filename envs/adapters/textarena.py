"""`textarena:<id>`: a single-player game of TextArena as an envgym env.

- the game is built without TextArena's default wrappers: envgym's rollout keeps the
  conversation, so each observation is only what the game said since the last move;
- task k of a split is a reset seed (`common.game_seed`);
- `state_key` hashes the game's `game_state` (board, secret, history) and whether it ended;
- a step is invalid when the game refused the move (TextArena's `set_invalid_move`: a retry
  within its error allowance, or the loss after it);
- the reward is TextArena's reward of player 0 when the game ends (1 for a win; some games
  give partial credit for a loss), 0 before; won: that reward is >= 1.

Multi-player games (TicTacToe, Chess, ...) need opponents and are refused with that reason.
"""

from __future__ import annotations

import importlib
from typing import Any

from envgym.envs.adapters.common import SeededGame, check_known, first_words, state_key

#: TextArena's single-player games that run offline here (Python 3.11): the others call `nltk.download`
#: (Hangman, WordLadder, SpellingBee...), read files the wheel lacks, or fail to import (Python 3.12 syntax).
OFFLINE_GAMES = ("2048-v0", "Bandit-v0", "Blackjack-v0", "Crosswords-v0", "FifteenPuzzle-v0", "FrozenLake-v0",
                 "GuessTheNumber-v0", "LightsOut-v0", "LogicPuzzle-v0", "Mastermind-v0", "Minesweeper-v0",
                 "PegJump-v0", "RushHour-v0", "Secretary-v0", "Set-v0", "Sokoban-v0", "Sudoku-v0",
                 "ThreeCardMonte-v0", "TowerOfHanoi-v0")
OFFLINE_HINT = f"single-player games that run offline: {', '.join(OFFLINE_GAMES)}"


class TextArenaEnv(SeededGame):
    """TextArena game `env_id` (an id of `textarena.envs.registration.ENV_REGISTRY`) made with `game_kwargs`."""

    instructions = ("You are playing a single-player game from TextArena. Its first message states the rules "
                    "and how to write a move; answer each message with your next move in exactly that format.")
    action_format = "a move in the game's own format, stated in its first message (e.g. [5])"

    def __init__(self, env_id: str, **game_kwargs: Any):
        import textarena  # noqa: F401 - registers the games
        from textarena.envs.registration import ENV_REGISTRY

        check_known("TextArena env", env_id, ENV_REGISTRY, OFFLINE_HINT)
        spec = ENV_REGISTRY[env_id]
        self.env_id, self.game_kwargs = env_id, dict(game_kwargs)
        super().__init__(f"textarena:{env_id}|{sorted(game_kwargs.items())}")
        with self._random.active():
            try:
                entry = spec.entry_point
                if isinstance(entry, str):  # some modules fail to import (Python 3.12 syntax, a missing package)
                    module, _, name = entry.partition(":")
                    entry = getattr(importlib.import_module(module), name)
                self.game = entry(**{**spec.kwargs, **game_kwargs})
                self.game.reset(num_players=1, seed=0)
            except Exception as exc:  # noqa: BLE001 - a game that cannot start alone here: say why, name others
                raise ValueError(f"TextArena env {env_id!r} could not start as a one-player game "
                                 f"({type(exc).__name__}: {first_words(exc)}); {OFFLINE_HINT}") from None
        if type(self.game.state).__name__ != "SinglePlayerState":
            raise ValueError(f"TextArena env {env_id!r} is a game of {type(self.game.state).__name__} (it needs "
                             f"opponents); envgym adapts single-player games: {OFFLINE_HINT}")

    def _new_messages(self) -> str:
        """What the game said since the last move (TextArena hands each message out once)."""
        import textarena

        _, messages = self.game.get_observation()
        return "\n".join(text for sender, text, kind in messages
                         if kind != textarena.ObservationType.PLAYER_ACTION).strip()

    def _info(self, **extra: Any) -> dict[str, Any]:
        state = self.game.state
        return {"state_key": state_key(f"textarena:{self.env_id}", [state.game_state, state.done]),
                "won": self.won, **extra}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        split, task = self.select_task(seed, options)
        self.won = False
        with self._random.active():
            self.game.reset(num_players=1, seed=self.game_seed(split, task))
            text = self._new_messages()
        return text, self._info()

    def step(self, action: str):
        action = self.check_action(action)
        state = self.game.state
        if state.done:
            return "The game is over.", 0.0, True, False, self._info(invalid_action=True)
        errors_before = state.error_count
        with self._random.active():
            done, _ = self.game.step(action)
            text = self._new_messages()
        invalid = state.error_count > errors_before or bool(state.game_info[0].get("invalid_move"))
        reward = 0.0
        if done:
            rewards = state.rewards or {}
            reward = float(rewards.get(0, 0.0))
            self.won = reward >= 1.0
            reason = state.game_info[0].get("reason")
            text = "\n".join(part for part in (text, reason and f"Game over: {reason}") if part)
        return text, reward, bool(done), False, self._info(invalid_action=invalid)
