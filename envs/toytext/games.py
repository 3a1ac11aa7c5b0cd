"""The Gymnasium toy-text games as envgym text envs: FrozenLake, Taxi, CliffWalking, Blackjack.

Each class says only what differs between games: its Gymnasium id, action
names, how a state reads in words, and what a task draws from its seed
(FrozenLake: a fresh map from `generate_random_map`; CliffWalking: the start
cell; Taxi and Blackjack: the reset seed's own start). See `adapter.ToyText`.
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium
import numpy as np
from gymnasium.envs.toy_text.frozen_lake import generate_random_map

from envgym.envs.toytext.adapter import ToyText


def _grid_text(rows: list[list[str]]) -> str:
    return "\n".join("".join(row) for row in rows)


class FrozenLake(ToyText):
    gym_id = "FrozenLake-v1"
    action_names = ("left", "down", "right", "up")
    aliases = {"west": "left", "south": "down", "east": "right", "north": "up"}
    knobs = {
        "size": "side of the square lake (default 4); each task is a fresh map from generate_random_map",
        "p": "probability that a tile is frozen rather than a hole (default 0.8); lower is harder",
        "is_slippery": "whether moves slip sideways with probability 2/3 (default False: deterministic)",
    }

    def __init__(self, size: int = 4, p: float = 0.8, is_slippery: bool = False):
        if size < 2:
            raise ValueError(f"size must be >= 2, got {size}")
        if not 0.0 < p <= 1.0:
            raise ValueError(f"p must be in (0, 1], got {p}")
        self.size, self.p, self.is_slippery = int(size), float(p), bool(is_slippery)
        self._lakes: dict[int, gymnasium.Env] = {}  # by task seed
        super().__init__(size=self.size, p=self.p, is_slippery=self.is_slippery)
        self.instructions = (
            f"Cross a frozen lake drawn as a {self.size}x{self.size} map: 'S' is the start, 'F' frozen ice, "
            "'H' a hole, 'G' the goal, and 'P' marks you. Reach the goal without falling into a hole. "
            + ("The ice is slippery: a move may send you sideways. " if self.is_slippery else "")
            + "Each turn, reply with one move: left, down, right or up."
        )

    def make_gym_env(self, seed: int) -> gymnasium.Env:
        if seed not in self._lakes:
            if len(self._lakes) > 256:
                self._lakes.clear()
            lake = generate_random_map(self.size, self.p, seed)
            self._lakes[seed] = gymnasium.make(self.gym_id, desc=lake, is_slippery=self.is_slippery).unwrapped
        return self._lakes[seed]

    def describe(self, obs: Any, terminated: bool) -> str:
        rows = [[c.decode() for c in row] for row in self.gym_env.desc]
        r, c = divmod(int(obs), self.size)
        rows[r][c] = "P"
        return f"{_grid_text(rows)}\nYou are at row {r}, column {c}."


class Taxi(ToyText):
    gym_id = "Taxi-v4"
    action_names = ("south", "north", "east", "west", "pickup", "dropoff")
    aliases = {"down": "south", "up": "north", "right": "east", "left": "west", "pick up": "pickup",
               "drop off": "dropoff"}
    knobs = {
        "is_rainy": "whether moves slip sideways with probability 0.2 (default False)",
        "fickle_passenger": "whether the passenger may change destination once (default False)",
    }
    _stops = "RGYB"

    def __init__(self, is_rainy: bool = False, fickle_passenger: bool = False):
        super().__init__(is_rainy=bool(is_rainy), fickle_passenger=bool(fickle_passenger))
        self.instructions = (
            "Drive a taxi on a 5x5 map: '|' is a wall, R, G, Y and B are the four stops, '@' is the taxi "
            "(a lowercase letter when it stands on that stop). Pick the passenger up at their stop and drop "
            "them off at their destination. Each move costs 1 point, a wrong pickup or dropoff 10, and a "
            "right dropoff earns 20 and ends the game. Reply with one action: south, north, east, west, "
            "pickup or dropoff."
        )

    def describe(self, obs: Any, terminated: bool) -> str:
        env = self.gym_env
        row, col, passenger, destination = env.decode(int(obs))
        rows = [[c.decode() for c in line] for line in env.desc]
        here = rows[row + 1][2 * col + 1]
        rows[row + 1][2 * col + 1] = here.lower() if here in self._stops else "@"

        def stop(i: int) -> str:
            r, c = env.locs[i]
            return f"{self._stops[i]} (row {r}, column {c})"

        if passenger == destination:  # only after the right dropoff
            where = f"has been dropped off at {stop(destination)}"
        else:
            where = "is in the taxi" if passenger == 4 else f"waits at {stop(passenger)}"
            where += f" and wants to go to {stop(destination)}"
        return f"{_grid_text(rows)}\nThe taxi is at row {row}, column {col}. The passenger {where}."


class CliffWalking(ToyText):
    gym_id = "CliffWalking-v1"
    action_names = ("up", "right", "down", "left")
    aliases = {"north": "up", "east": "right", "south": "down", "west": "left"}
    test_fraction = 0.2  # only 37 start cells: a larger test share keeps ~7 of them for testing
    knobs = {
        "is_slippery": "whether moves slip sideways with probability 2/3 (default False)",
    }

    def __init__(self, is_slippery: bool = False):
        super().__init__(is_slippery=bool(is_slippery))
        self.instructions = (
            "Walk along a cliff on a 4x12 map: '_' is safe ground, 'C' the cliff, 'G' the goal, '@' you. "
            "Each task starts you on a different safe cell. Each step costs 1 point; stepping onto the cliff "
            "costs 100 and sends you back to the bottom-left corner. Reach the goal. Reply with one move: "
            "up, right, down or left."
        )

    def start(self, seed: int) -> Any:
        env = self.gym_env
        env.reset(seed=seed)
        goal = env.observation_space.n - 1
        safe = [s for s in range(goal) if not env._cliff[np.unravel_index(s, env.shape)]]
        env.s = int(safe[np.random.default_rng(seed).integers(len(safe))])
        return env.s

    def describe(self, obs: Any, terminated: bool) -> str:
        env = self.gym_env
        rows = [["C" if env._cliff[r, c] else "_" for c in range(env.shape[1])] for r in range(env.shape[0])]
        rows[-1][-1] = "G"
        r, c = np.unravel_index(int(obs), env.shape)
        rows[r][c] = "@"
        return f"{_grid_text(rows)}\nYou are at row {r}, column {c}."

    def is_won(self, reward: float, terminated: bool) -> bool:
        return terminated  # the only terminal cell is the goal


# Blackjack: an infinite deck; a ten-valued card is 4 of 13 ranks.
_CARD_PROBABILITIES = {card: (4 if card == 10 else 1) / 13 for card in range(1, 11)}


def _hand_total(raw: int, has_ace: bool) -> int:
    return raw + 10 if has_ace and raw + 10 <= 21 else raw


@functools.cache
def _dealer_final(raw: int, has_ace: bool) -> dict[int, float]:
    """Distribution of the dealer's final total (22 = bust) from a hand; the dealer hits below 17 (soft 17 stands)."""
    total = _hand_total(raw, has_ace)
    if total >= 17:
        return {min(total, 22): 1.0}
    final: dict[int, float] = {}
    for card, p in _CARD_PROBABILITIES.items():
        for outcome, q in _dealer_final(raw + card, has_ace or card == 1).items():
            final[outcome] = final.get(outcome, 0.0) + p * q
    return final


@functools.cache
def blackjack_values(total: int, usable_ace: bool, dealer_card: int) -> tuple[float, float]:
    """Expected return of (stick, hit) from a player total, under Gymnasium's default rules (no natural bonus)."""
    dealer = _dealer_final(dealer_card, dealer_card == 1)
    stick = sum(p * (1.0 if d == 22 or total > d else -1.0 if total < d else 0.0) for d, p in dealer.items())
    raw = total - 10 if usable_ace else total
    hit = 0.0
    for card, p in _CARD_PROBABILITIES.items():
        has_ace = usable_ace or card == 1
        new_total = _hand_total(raw + card, has_ace)
        if new_total > 21:
            hit -= p
        else:
            hit += p * max(blackjack_values(new_total, raw + card + 10 <= 21 and has_ace, dealer_card))
    return stick, hit


class Blackjack(ToyText):
    gym_id = "Blackjack-v1"
    action_names = ("stick", "hit")
    aliases = {"stand": "stick", "stay": "stick", "draw": "hit"}
    knobs = {
        "natural": "pay 1.5 for winning with a natural blackjack (default False)",
        "sab": "Sutton & Barto rules: a natural wins outright (default False)",
    }

    def __init__(self, natural: bool = False, sab: bool = False):
        super().__init__(natural=bool(natural), sab=bool(sab))
        self.instructions = (
            "Play one hand of blackjack against the dealer with an infinite deck. Cards count their value, "
            "face cards 10, an ace 1 or 11. Hit to take a card; stick to stop and let the dealer draw to 17 "
            "or more. Going over 21 loses. Closer to 21 than the dealer wins 1, a tie gives 0, a loss -1. "
            "Reply with one action: hit or stick."
        )

    @staticmethod
    def _cards(hand: list[int]) -> str:
        return ", ".join("ace" if card == 1 else str(card) for card in hand)

    def describe(self, obs: Any, terminated: bool) -> str:
        env = self.gym_env
        total, dealer_card, usable_ace = obs
        ace = " (an ace counts 11)" if usable_ace else ""
        text = f"Your cards: {self._cards(env.player)}, total {total}{ace}."
        if terminated and total <= 21:
            dealer_total = _hand_total(sum(env.dealer), 1 in env.dealer)
            return f"{text}\nDealer's cards: {self._cards(env.dealer)}, total {dealer_total}."
        return f"{text}\nThe dealer shows: {self._cards([dealer_card])}."

    def optimal_action(self, obs: Any) -> int:
        """The action with the higher expected return by dynamic programming (exact for natural=sab=False)."""
        total, dealer_card, usable_ace = obs
        stick, hit = blackjack_values(int(total), bool(usable_ace), int(dealer_card))
        return int(hit > stick)
