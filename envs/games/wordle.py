"""Wordle: find a hidden five-letter word in six guesses from per-letter colour feedback.

Each valid guess is scored letter by letter, as in the NYT game: ``G`` the letter
is in that spot, ``Y`` it is in the word but elsewhere, ``_`` it is not in the
word (repeated letters are marked only as often as the answer has them). Guesses
must be words of the shipped list (`data/wordle_words.txt`, whose header says
where it comes from); anything else is refused and costs no guess.

The answer is known (`info["answer"]`), so information-gain turn rewards can be
measured against it. The state key is the set of (guess, feedback) pairs made so
far: guessing the same words in another order reaches the same anchor.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from envgym.core import Env, partition_tasks

WORDS_FILE = Path(__file__).parent / "data" / "wordle_words.txt"
WORD_LENGTH = 5
#: The solver's first guess: the word of the list whose feedback splits the whole
#: list into the most even partition (maximum entropy), found once by `best_guess`
#: over the full list; recompute it if the list changes.
OPENER = "raise"
#: Besides the words still possible, the solver may probe with this many of the most frequent words.
PROBES = 500


@functools.cache
def load_words() -> tuple[str, ...]:
    """The shipped word list, most frequent first (comment lines start with '#')."""
    lines = WORDS_FILE.read_text(encoding="utf-8").splitlines()
    return tuple(line for line in lines if line and not line.startswith("#"))


def feedback(guess: str, answer: str) -> str:
    """The colour pattern of `guess` against `answer`: one of G/Y/_ per letter."""
    marks = ["_"] * WORD_LENGTH
    unmatched: dict[str, int] = {}
    for i, (g, a) in enumerate(zip(guess, answer)):
        if g == a:
            marks[i] = "G"
        else:
            unmatched[a] = unmatched.get(a, 0) + 1
    for i, g in enumerate(guess):
        if marks[i] != "G" and unmatched.get(g, 0) > 0:
            marks[i] = "Y"
            unmatched[g] -= 1
    return "".join(marks)


def best_guess(candidates: list[str], guesses: list[str]) -> str:
    """The word of `guesses` whose feedback over `candidates` has the most entropy (ties: earliest)."""
    best, best_entropy = guesses[0], -1.0
    n = len(candidates)
    for guess in guesses:
        counts = Counter(feedback(guess, answer) for answer in candidates)
        entropy = -sum(c / n * math.log2(c / n) for c in counts.values())
        if entropy > best_entropy + 1e-12:
            best, best_entropy = guess, entropy
    return best


class Wordle(Env):
    episode_state = ("answer", "history", "won")  # fork copies these (see Env.fork)
    knobs = {
        "max_guesses": "valid guesses allowed before the game is lost (default 6)",
    }
    action_format = "one five-letter English word, e.g. 'crane'"

    def __init__(self, max_guesses: int = 6):
        if max_guesses < 1:
            raise ValueError(f"max_guesses must be >= 1, got {max_guesses}")
        self.max_guesses = int(max_guesses)
        words = load_words()
        self._vocabulary = frozenset(words)
        self._answers = partition_tasks(words, lambda w: f"wordle|{w}", 0.2)
        self.num_tasks = {s: len(v) for s, v in self._answers.items()}
        self.instructions = (
            f"Find the hidden five-letter English word in at most {self.max_guesses} guesses. "
            "Reply with one five-letter word each turn. After each guess you get one mark per letter: "
            "G means the letter is in the word at that spot, Y means it is in the word at another spot, "
            "_ means it is not in the word. Words that are not in the game's word list are refused "
            "and cost no guess."
        )
        self.answer = words[0]
        self.history: list[tuple[str, str]] = []

    def task_key(self, split: str, index: int) -> str:
        return f"wordle|{self._answers[split][index]}"

    def _board(self) -> str:
        rows = [f"{i}. {guess.upper()}  {' '.join(marks)}" for i, (guess, marks) in enumerate(self.history, 1)]
        return "\n".join(rows)

    def _info(self, **extra: Any) -> dict[str, Any]:
        key = ",".join(sorted(f"{g}:{m}" for g, m in self.history)) or "start"
        return {"state_key": key, "answer": self.answer, "won": self.won, **extra}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        split, task = self.select_task(seed, options)
        self.answer = self._answers[split][task]
        self.history = []
        self.won = False
        return f"Guess the hidden five-letter word. You have {self.max_guesses} guesses.", self._info()

    def step(self, action: str):
        action = self.check_action(action)
        guess = action.strip().strip(".!'\"").lower()
        if guess not in self._vocabulary:
            reason = (f"{action[:40]!r} is not a five-letter word" if len(guess) != WORD_LENGTH
                      else f"{guess!r} is not in the word list")
            obs = f"Refused: {reason}. Reply with one five-letter English word.\n{self._board()}".rstrip()
            return obs, 0.0, False, False, self._info(invalid_action=True)
        marks = feedback(guess, self.answer)
        self.history.append((guess, marks))
        board = self._board()
        if marks == "G" * WORD_LENGTH:
            self.won = True
            return f"{board}\nSolved in {len(self.history)}!", 1.0, True, False, self._info(invalid_action=False)
        left = self.max_guesses - len(self.history)
        if left == 0:
            obs = f"{board}\nOut of guesses. The word was {self.answer.upper()}."
            return obs, 0.0, True, False, self._info(invalid_action=False)
        return f"{board}\n{left} guesses left.", 0.0, False, False, self._info(invalid_action=False)

    def sample_action(self, rng: np.random.Generator) -> str:
        """Any word of the list, uniformly (not only those still possible)."""
        words = load_words()
        return words[int(rng.integers(len(words)))]

    def oracle_action(self) -> str:
        """An entropy solver: the guess whose feedback best splits the words still possible.

        It probes with frequent words that cannot be the answer only while more than two remain,
        and prefers a possible word on ties.
        """
        if not self.history:
            return OPENER
        candidates = [w for w in load_words() if all(feedback(g, w) == m for g, m in self.history)]
        if len(candidates) <= 2:
            return candidates[0]
        possible = set(candidates)
        return best_guess(candidates, candidates + [w for w in load_words()[:PROBES] if w not in possible])
