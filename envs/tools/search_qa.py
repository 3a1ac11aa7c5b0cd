"""Multi-hop question answering over a synthetic corpus of fictional people, companies, cities, countries.

The world is generated from `world_seed`: invented names and relations (born
in, works at, founded by, headquartered in, located in), one document per
entity. Questions chain two or three relations ("Where was the founder of
Zarvex Labs born?"), so the answer cannot be known without searching. The
agent has `search` (BM25 over the corpus) and `open` (a document by id) and
answers with <answer>...</answer>, scored by SQuAD-style F1 or exact match.
"""

from __future__ import annotations

import collections
import functools
import re
import string
from dataclasses import dataclass
from typing import Any

import numpy as np

from envgym.core import partition_tasks
from envgym.envs.tools.base import ToolEnv, answer_tag, tool_call
from envgym.tools import Tool, ToolSet
from envgym.tools.search import Document, SearchIndex

_SYLLABLES = ("zar vex quel mor ta li an dro ves ka nu pel ith or bra si len gor fa mi tol ur en sa "
              "ri vo dal ke ny os trem hal ba cor ze lu ma ne").split()
_PROFESSIONS = ("engineer", "chemist", "architect", "economist", "pilot", "botanist", "lawyer", "composer")
_INDUSTRIES = ("shipping", "software", "mining", "textile", "aerospace", "pharmaceutical", "energy", "publishing")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and the articles a/an/the, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalised answers (SQuAD)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if not pred or not ref or common == 0:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    chain: tuple[str, ...]  # doc ids to read, in order
    first_entity: str  # the name the question starts from


@dataclass
class World:
    """A generated world: its documents and the multi-hop questions over it."""

    documents: list[Document]
    questions: list[Question]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def build_world(seed: int, people: int = 240, companies: int = 60, cities: int = 30, countries: int = 8) -> World:
    """A world of fictional entities with unique names, generated from `seed` alone."""
    rng = np.random.default_rng(seed)
    used: set[str] = set()

    def name(parts: int, suffixes: tuple[str, ...] = ("",)) -> str:
        while True:
            stem = "".join(_SYLLABLES[i] for i in rng.integers(len(_SYLLABLES), size=parts)).capitalize()
            full = (stem + suffixes[int(rng.integers(len(suffixes)))]).strip()
            if full not in used:
                used.add(full)
                return full

    country_names = [name(2, ("ia", "land", "ovia")) for _ in range(countries)]
    city_names = [name(2, ("port", "ford", "ville", "", " Falls")) for _ in range(cities)]
    city_country = [country_names[i % countries] for i in range(cities)]
    person_names = [f"{name(2)} {name(3)}" for _ in range(people)]
    company_names = [name(2, (" Corp", " Labs", " Industries", " Systems", " Works")) for _ in range(companies)]
    born = [city_names[int(rng.integers(cities))] for _ in range(people)]
    born_year = [int(rng.integers(1940, 2000)) for _ in range(people)]
    profession = [_PROFESSIONS[int(rng.integers(len(_PROFESSIONS)))] for _ in range(people)]
    founder = [int(i) for i in rng.choice(people, size=companies, replace=False)]
    headquarters = [city_names[int(rng.integers(cities))] for _ in range(companies)]
    founded = [int(rng.integers(1950, 2020)) for _ in range(companies)]
    industry = [_INDUSTRIES[int(rng.integers(len(_INDUSTRIES)))] for _ in range(companies)]
    employer = [int(rng.integers(companies)) for _ in range(people)]
    for c, p in enumerate(founder):
        employer[p] = c

    docs = []
    for i, country in enumerate(country_names):
        capital = city_names[i] if i < cities else "none recorded"
        docs.append(Document(_slug(country), country, f"{country} is a country. Its capital is {capital}."))
    for i, city in enumerate(city_names):
        population = int(rng.integers(20, 2000)) * 1000
        docs.append(Document(_slug(city), city, f"{city} is a city in {city_country[i]} with about "
                                                f"{population:,} inhabitants."))
    for i, person in enumerate(person_names):
        docs.append(Document(_slug(person), person,
                             f"{person} is {_article(profession[i])} {profession[i]} born in {born[i]} "
                             f"in {born_year[i]}. "
                             f"{person.split()[0]} works at {company_names[employer[i]]}."))
    for c, company in enumerate(company_names):
        docs.append(Document(_slug(company), company,
                             f"{company} is {_article(industry[c])} {industry[c]} company founded in {founded[c]} by "
                             f"{person_names[founder[c]]}. Its headquarters are in {headquarters[c]}."))

    country_of = dict(zip(city_names, city_country))
    questions = []
    for c, company in enumerate(company_names):
        boss = person_names[founder[c]]
        hq = headquarters[c]
        questions += [
            Question(f"Where was the founder of {company} born?", born[founder[c]],
                     (_slug(company), _slug(boss)), company),
            Question(f"In which country are the headquarters of {company}?", country_of[hq],
                     (_slug(company), _slug(hq)), company),
            Question(f"In which country was the founder of {company} born?", country_of[born[founder[c]]],
                     (_slug(company), _slug(boss), _slug(born[founder[c]])), company),
        ]
    for i, person in enumerate(person_names):
        if i in founder:
            continue
        company = company_names[employer[i]]
        questions += [
            Question(f"In which city are the headquarters of the company {person} works at?",
                     headquarters[employer[i]], (_slug(person), _slug(company)), person),
            Question(f"In what year was the company that {person} works at founded?", str(founded[employer[i]]),
                     (_slug(person), _slug(company)), person),
        ]
    return World(docs, questions)


@functools.lru_cache(maxsize=4)
def _world_and_index(seed: int) -> tuple[World, SearchIndex]:
    world = build_world(seed)
    return world, SearchIndex.build(world.documents)


class SearchQA(ToolEnv):
    """Answer a multi-hop question about a fictional world by searching and opening its documents."""

    knobs = {
        "world_seed": "seed of the generated world (corpus and questions); default 0",
        "reward": "'f1' (token-overlap F1, default) or 'em' (exact match) of the normalised answer",
        "k": "search results per query (default 5)",
    }

    def __init__(self, world_seed: int = 0, reward: str = "f1", k: int = 5):
        if reward not in ("f1", "em"):
            raise ValueError(f"reward must be 'f1' or 'em', got {reward!r}")
        self.world_seed, self.reward, self.k = int(world_seed), reward, int(k)
        self.world, self.index = _world_and_index(self.world_seed)
        self._questions = partition_tasks(self.world.questions, self._key, 0.15)
        self.num_tasks = {s: len(qs) for s, qs in self._questions.items()}
        self.tools = ToolSet([
            Tool("search", "Search the encyclopedia; returns document ids, titles and snippets.",
                 {"type": "object", "properties": {"query": {"type": "string", "minLength": 1}},
                  "required": ["query"]}, self._search),
            Tool("open", "Open a document by its id (as shown in search results) and read all of it.",
                 {"type": "object", "properties": {"doc_id": {"type": "string"}}, "required": ["doc_id"]},
                 self._open),
        ])
        self.instructions = (
            "Answer the question about a fictional world using only its encyclopedia. Tools:\n"
            f"{self.tools.describe()}\n"
            "Questions need several hops: find one entity, read its document, then follow it to the next. "
            "Reply with <answer>SHORT ANSWER</answer> when you know it; that ends the episode."
        )
        self.action_format = ('a tool call, e.g. <tool_call>{"name": "search", "arguments": {"query": "..."}}'
                              "</tool_call>, or <answer>...</answer>")
        self.opened: list[str] = []

    def _key(self, question: Question) -> str:
        return f"world{self.world_seed}|{question.text}"

    def task_key(self, split: str, index: int) -> str:
        return self._key(self._questions[split][index])

    def _search(self, query: str) -> str:
        hits = self.index.search(query, self.k)
        if not hits:
            return f"no documents match {query!r}; try other words (names of people, companies, cities)."
        return "\n".join(f"{h.doc_id} | {h.title} | {h.text[:120]}" for h in hits)

    def _open(self, doc_id: str) -> str:
        doc = self.index.get(doc_id.strip())
        if doc is None:
            return f"no document with id {doc_id!r}; use an id from the search results (e.g. the first column)."
        return f"{doc.title}\n{doc.text}"

    def on_call(self, call) -> None:
        if call.name == "open" and self.index.get(call.arguments["doc_id"].strip()) is not None:
            self.opened.append(call.arguments["doc_id"].strip())

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        split, index = self.select_task(seed, options)
        self.question = self._questions[split][index]
        self.opened = []
        self.start_episode(self._key(self.question), self.question.answer)
        return self.question.text, self.info()

    def score(self, answer: str) -> float:
        return (f1_score if self.reward == "f1" else exact_match)(answer, self.gold)

    def oracle_action(self) -> str:
        if not self.calls:
            return tool_call("search", query=self.question.first_entity)
        for doc_id in self.question.chain:
            if doc_id not in self.opened:
                return tool_call("open", doc_id=doc_id)
        return answer_tag(self.gold)
