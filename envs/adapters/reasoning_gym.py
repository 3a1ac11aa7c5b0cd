"""`reasoning_gym:<dataset>`: a procedural dataset of reasoning-gym as a one-turn envgym env.

The observation is the question; the action is the answer (alone, or inside
`<answer>...</answer>` as reasoning-gym's prompts ask); the reward is the
dataset's own `score_answer`, in [0, 1]. reasoning-gym gives a score and no
other feedback, so with `attempts=N` a wrong answer is answered with its score
and the question is asked again, up to N answers (the feedback turn).

Task k of a split is an item of the dataset whose question hashes into the
split (`draw_task` over `split_of`), so train and test never share a question.
"""

from __future__ import annotations

from typing import Any

from envgym.core import Env, draw_task, stable_hash
from envgym.envs.adapters.common import check_known

#: Items the dataset may generate (its virtual size); task seeds index into them.
DATASET_ITEMS = 1_000_000
#: Draws of a task before giving up: a dataset with this few distinct questions cannot be split.
MAX_DRAWS = 2_000
#: Answers longer than this are wrong without calling the scorer (some parse with sympy, slowly).
MAX_ANSWER_CHARS = 4_096


class ReasoningGymEnv(Env):
    """reasoning-gym dataset `dataset`, made with `config` (its config class's fields), `attempts` answers per task."""

    instructions = ("Answer the question. Think it through, then give your final answer inside "
                    "<answer>...</answer> (a reply without the tags is read as the answer itself).")
    action_format = "the answer, e.g. <answer>42</answer>"
    knobs = {"attempts": "answers per task: after a wrong one the env replies with its score and asks again "
                         "(default 1: a one-turn env)",
             "config": "fields of the dataset's config class, e.g. {min_animals: 2} (see reasoning-gym)"}

    def __init__(self, dataset: str, attempts: int = 1, config: dict[str, Any] | None = None):
        import reasoning_gym
        from reasoning_gym.factory import DATASETS

        check_known("reasoning-gym dataset", dataset, DATASETS,
                    f"it has {len(DATASETS)}, e.g. {', '.join(sorted(DATASETS)[:5])}")
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.dataset, self.attempts, self.config = dataset, int(attempts), dict(config or {})
        try:
            self.data = reasoning_gym.create_dataset(dataset, **{**self.config, "seed": 0, "size": DATASET_ITEMS})
        except (TypeError, AssertionError) as exc:  # an unknown field, or a value its validate() refuses
            raise ValueError(f"reasoning_gym:{dataset} config {self.config}: {exc}") from None
        self.num_tasks = {"train": 100_000, "test": 1_000}
        self._entries: dict[tuple[str, int], dict[str, Any]] = {}
        self.entry: dict[str, Any] = {}
        self.attempt, self.done, self.won = 0, False, False

    def _draw(self, split: str, index: int) -> dict[str, Any]:
        """Item `index` of `split` (cached: the checker asks for thousands)."""
        key = (split, index)
        if key not in self._entries:
            draws = 0

            def item(seed: int) -> dict[str, Any] | None:
                nonlocal draws
                draws += 1
                if draws > MAX_DRAWS:
                    raise ValueError(f"reasoning_gym:{self.dataset} with config {self.config} gave no question of "
                                     f"the {split} split in {MAX_DRAWS} draws: too few distinct questions to split")
                try:
                    return self.data[seed % DATASET_ITEMS]
                except Exception:  # noqa: BLE001 - a generator bug on this seed (basic_arithmetic divides by 0)
                    return None

            if len(self._entries) > 20_000:
                self._entries.clear()
            self._entries[key] = draw_task(f"reasoning_gym:{self.dataset}", split, index, item,
                                           lambda entry: f"reasoning_gym:{self.dataset}|{entry['question']}")
        return self._entries[key]

    def task_key(self, split: str, index: int) -> str:
        return f"reasoning_gym:{self.dataset}|{self._draw(split, index)['question']}"

    def _info(self, **extra: Any) -> dict[str, Any]:
        question = stable_hash(self.entry["question"]) & 0xFFFF_FFFF_FFFF_FFFF
        state = "done" if self.done else f"attempt {self.attempt}"
        return {"state_key": f"reasoning_gym:{self.dataset}|{question:016x}|{state}", "won": self.won,
                "answer": str(self.entry["answer"]), **extra}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        split, task = self.select_task(seed, options)
        self.entry = self._draw(split, task)
        self.attempt, self.done, self.won = 0, False, False
        return self.entry["question"], self._info()

    def _score(self, action: str) -> float | None:
        """The dataset's score of the answer in `action`, or None when there is no answer to score."""
        from reasoning_gym.utils import extract_answer

        answer = extract_answer(action)
        answer = (action if answer is None else answer).strip()
        if not answer or len(answer) > MAX_ANSWER_CHARS:
            return None
        try:
            return float(self.data.score_answer(answer, self.entry))
        except Exception:  # noqa: BLE001 - a scorer that cannot parse the answer: it is not a valid answer
            return None

    def step(self, action: str):
        action = self.check_action(action)
        if self.done:
            return "The task is over.", 0.0, True, False, self._info(invalid_action=True)
        score = self._score(action)
        self.attempt += 1
        self.won = score is not None and score >= 1.0
        self.done = self.won or self.attempt >= self.attempts
        shown = "no answer found" if score is None else f"score {score:.2f}"
        if self.won:
            text = "Correct."
        elif self.done:
            text = f"Not correct ({shown}). The answer was: {self.entry['answer']}"
        else:
            text = f"Not correct ({shown}). Try again ({self.attempts - self.attempt} answer(s) left):\n" \
                   f"{self.entry['question']}"
        reward = (score or 0.0) if self.done else 0.0
        return text, reward, self.done, False, self._info(invalid_action=score is None)

    def oracle_action(self) -> str:
        return f"<answer>{self.entry['answer']}</answer>"
