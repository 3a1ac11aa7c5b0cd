"""Twenty questions over items described by attributes: ask yes/no questions, then name the item.

The hidden item has one value of each of `attributes` attributes (color, shape,
size, ...), each drawn from `values` possible values, so the items are the
product of the attributes' values and the answer is compositional: "red round
tiny wood" is named value by value. Train and test hold disjoint items, so a
policy that wins held-out items has learnt to ask and to compose, not the items.

Each turn the agent either asks whether the item has one value ("red?"), and is
told yes or no together with what is left of that attribute ("No, its color is
green or blue."), or names the item with one value of every attribute ("it is
red round tiny wood"; words other than values are ignored), which ends the game
(reward 1 if right). The default budget is the information-maximising
questioner's worst case plus the answer, `attributes * (values - 1) + 1` turns,
so a repeated or already-answered question can cost the game; `turns` tightens
or loosens it. With `view="summary"` every observation also lists the values
left of every attribute, so the current observation alone holds all the agent
has learnt (a memoryless policy can play; cheap to train).

`info["answer"]` is the values alone ("red round tiny wood"); the oracle says
"it is" first, so a policy's first word says whether it asks or answers, and an
information-gain reward scored with the template "it is {answer}" keeps the
policy's readiness to answer in one token, the rest measuring its belief.

The state key is the set of candidates still possible (per attribute, the
values left), so two question orders that learnt the same things share an
anchor and a repeated question stays on its anchor.
"""

from __future__ import annotations

import re
from itertools import product
from typing import Any

from envgym.core import Env, partition_tasks

#: Every attribute and its possible values, in order; a game uses the first `attributes`
#: attributes and the first `values` values of each. No value word belongs to two attributes.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": ("red", "green", "blue", "yellow", "white", "black"),
    "shape": ("round", "square", "flat", "long", "curved", "pointed"),
    "size": ("tiny", "small", "medium", "large", "huge", "giant"),
    "material": ("wood", "metal", "glass", "stone", "paper", "cloth"),
    "pattern": ("plain", "striped", "dotted", "checked", "spotted", "wavy"),
    "room": ("kitchen", "garden", "office", "garage", "bedroom", "attic"),
}
TEST_FRACTION = 0.2
_WORD = re.compile(r"[a-z]+")


def or_list(words: tuple[str, ...]) -> str:
    """'red', 'red or green', 'red, green or blue'."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


class TwentyQuestions(Env):
    episode_state = ("item", "left", "turns_left", "won")  # fork copies these (see Env.fork)
    attribute_table = ATTRIBUTES  # every attribute and value any configuration can name (the tiny model's words)
    knobs = {
        "attributes": f"attributes per item (default 4, at most {len(ATTRIBUTES)}): color, shape, size, ...",
        "values": "possible values per attribute (default 3, 2 to 6); items = values ** attributes",
        "turns": "turn budget, the answer included (default attributes * (values - 1) + 1: the oracle's worst case)",
        "view": "'answer' (default): each observation answers the last question; 'summary': it also lists what is left",
    }

    def __init__(self, attributes: int = 4, values: int = 3, turns: int | None = None, view: str = "answer"):
        if view not in ("answer", "summary"):
            raise ValueError(f"view must be 'answer' or 'summary', got {view!r}")
        if not 2 <= attributes <= len(ATTRIBUTES):
            raise ValueError(f"attributes must be in [2, {len(ATTRIBUTES)}], got {attributes}")
        if not 2 <= values <= len(ATTRIBUTES["color"]):
            raise ValueError(f"values must be in [2, {len(ATTRIBUTES['color'])}], got {values}")
        self.attributes, self.values = int(attributes), int(values)
        self.turns = self.attributes * (self.values - 1) + 1 if turns is None else int(turns)
        if self.turns < 1:
            raise ValueError(f"turns must be >= 1, got {turns}")
        self.view = view
        self.names = tuple(ATTRIBUTES)[: self.attributes]
        self.domains = tuple(ATTRIBUTES[name][: self.values] for name in self.names)
        self._attribute_of = {value: a for a, domain in enumerate(self.domains) for value in domain}
        self._items = partition_tasks(product(*self.domains), self._item_key, TEST_FRACTION)
        self.num_tasks = {split: len(items) for split, items in self._items.items()}
        example = "it is " + " ".join(domain[0] for domain in self.domains)
        described = "; ".join(f"{name}: {or_list(domain)}" for name, domain in zip(self.names, self.domains))
        self.instructions = (
            f"I am thinking of an item with {self.attributes} attributes ({described}). Find it within "
            f"{self.turns} turns. Each turn, either ask whether the item has one value, e.g. '{self.domains[0][0]}?', "
            "and I answer yes or no and say which values of that attribute are left; or name the item with one "
            f"value of every attribute, e.g. '{example}', which ends the game. A question about something you "
            "already know wastes a turn."
        )
        self.action_format = (f"one value to ask about, e.g. '{self.domains[0][0]}?', or one value of every attribute, "
                              f"e.g. '{example}'")
        self.item: tuple[str, ...] = tuple(domain[0] for domain in self.domains)
        self.left: list[tuple[str, ...]] = list(self.domains)
        self.turns_left = self.turns
        self.won = False

    @staticmethod
    def _item_key(item: tuple[str, ...]) -> str:
        return "questions|" + " ".join(item)

    def task_key(self, split: str, index: int) -> str:
        return self._item_key(self._items[split][index])

    def _info(self, **extra: Any) -> dict[str, Any]:
        return {"state_key": "|".join(",".join(values) for values in self.left), "answer": " ".join(self.item),
                "won": self.won, **extra}

    def _status(self) -> str:
        """The turns left, after what is known of every attribute in the summary view."""
        known = "".join(f"{name}: {', '.join(values)}; " for name, values in zip(self.names, self.left))
        turns = f"{self.turns_left} turn{'s' if self.turns_left != 1 else ''} left."
        return known + turns if self.view == "summary" else turns

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        split, task = self.select_task(seed, options)
        self.item = self._items[split][task]
        self.left = list(self.domains)
        self.turns_left = self.turns
        self.won = False
        return f"Find the item. {self._status()}", self._info()

    def step(self, action: str):
        action = self.check_action(action)
        named = [word for word in _WORD.findall(action.lower()) if word in self._attribute_of]
        self.turns_left -= 1
        if len(named) == 1:
            return self._answer(named[0])
        if sorted(self._attribute_of[word] for word in named) == list(range(self.attributes)):
            self.won = tuple(sorted(named, key=self._attribute_of.__getitem__)) == self.item
            verdict = "Right" if self.won else "Wrong"
            return f"{verdict}, it is {' '.join(self.item)}.", float(self.won), True, False, \
                self._info(invalid_action=False)
        obs = (f"Invalid: I read {', '.join(named) or 'no value'}. Ask about one value or name one value of each "
               f"of {', '.join(self.names)}.")
        return self._after(obs, invalid=True)

    def _answer(self, value: str):
        """Answer the question 'does the item have `value`?' and narrow that attribute's values."""
        a = self._attribute_of[value]
        yes = self.item[a] == value
        self.left[a] = (value,) if yes else tuple(v for v in self.left[a] if v != value)
        if self.view == "summary":  # the summary says what is left
            return self._after("Yes." if yes else "No.", invalid=False)
        return self._after(f"{'Yes' if yes else 'No'}, its {self.names[a]} is {or_list(self.left[a])}.", invalid=False)

    def _after(self, obs: str, invalid: bool):
        """A non-final turn's result, or the loss when it used the last turn."""
        if self.turns_left == 0:
            return f"{obs} No turns left: it was {' '.join(self.item)}.", 0.0, True, False, \
                self._info(invalid_action=invalid)
        return f"{obs} {self._status()}", 0.0, False, False, self._info(invalid_action=invalid)

    def oracle_action(self) -> str:
        """Information-maximising play: name the item once it is known or on the last turn; else ask about the
        attribute with the fewest values left (a yes/no on one of m values carries H(1/m) bits, most for small m)."""
        open_attributes = [a for a, values in enumerate(self.left) if len(values) > 1]
        if not open_attributes or self.turns_left <= 1:
            return "it is " + " ".join(values[0] for values in self.left)  # "it is": answering, not asking
        a = min(open_attributes, key=lambda a: len(self.left[a]))
        return f"{self.left[a][0]}?"
