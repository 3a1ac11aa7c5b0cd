"""The Env contract pieces: TextSpace, stable hashes, task selection, action checks."""

import subprocess
import sys

import pytest

import envgym
from envgym.core import TextSpace, split_of, stable_hash, task_seed


def test_text_space_contains_any_utf8_up_to_max_length():
    space = TextSpace(max_length=10)
    assert space.contains("héllo 中文")
    assert space.contains("")
    assert not space.contains("x" * 11)
    assert not space.contains(b"bytes")
    assert not space.contains(5)
    assert not space.contains("\udc80")  # a lone surrogate cannot be encoded as UTF-8


def test_text_space_samples_are_members_and_seeded():
    a, b = TextSpace(16, seed=3), TextSpace(16, seed=3)
    samples = [a.sample() for _ in range(50)]
    assert samples == [b.sample() for _ in range(50)]
    assert all(a.contains(s) and len(s) >= 1 for s in samples)
    with pytest.raises(ValueError, match="max_length"):
        TextSpace(0)


def test_stable_hash_is_the_same_in_another_process():
    here = [stable_hash(k) for k in ("a", "room:kitchen", "")]
    code = "from envgym.core import stable_hash; print([stable_hash(k) for k in ('a', 'room:kitchen', '')])"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert str(here) == there.strip()
    assert all(-(2**63) <= h < 2**63 for h in here)
    assert len(set(here)) == 3


def test_task_seed_and_split_of_are_deterministic_and_partition():
    assert task_seed("maze", "train", 1) == task_seed("maze", "train", 1)
    assert task_seed("maze", "train", 1) != task_seed("maze", "test", 1)
    splits = [split_of(f"k{i}", 0.25) for i in range(4000)]
    assert set(splits) == {"train", "test"}
    assert 0.2 < splits.count("test") / len(splits) < 0.3


def test_select_task_validates_options():
    env = envgym.make("games/Maze-v0")
    with pytest.raises(ValueError, match="unknown split 'dev'.*'test', 'train'"):
        env.reset(options={"split": "dev"})
    with pytest.raises(ValueError, match=r"task must be an int in \[0, 1000\)"):
        env.reset(options={"split": "test", "task": 1000})
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"difficulty": 3})
    env.reset(seed=0, options={"split": "test", "task": 999})
    assert (env.unwrapped.split, env.unwrapped.task) == ("test", 999)


def test_task_is_drawn_from_the_seed_when_not_given():
    env = envgym.make("games/Maze-v0")
    tasks = set()
    for seed in range(20):
        env.reset(seed=seed)
        tasks.add(env.unwrapped.task)
        first = env.unwrapped.task
        env.reset(seed=seed)
        assert env.unwrapped.task == first
    assert len(tasks) > 10


def test_non_str_actions_raise_type_error_naming_the_type():
    env = envgym.make("games/GuessNumber-v0")
    env.reset(seed=0)
    with pytest.raises(TypeError, match="action must be str, got int"):
        env.step(42)
    with pytest.raises(TypeError, match="got bytes"):
        env.step(b"42")


def test_draw_task_is_pure_keeps_splits_apart_and_applies_accept():
    from envgym.core import draw_task

    def make(seed):
        return None if seed % 3 == 0 else seed % 1000  # some draws fail outright

    def key(task):
        return f"number|{task}"

    train = [draw_task("numbers", "train", k, make, key) for k in range(200)]
    test = [draw_task("numbers", "test", k, make, key) for k in range(200)]
    assert train == [draw_task("numbers", "train", k, make, key) for k in range(200)]
    assert all(split_of(key(t)) == "train" for t in train) and all(split_of(key(t)) == "test" for t in test)
    assert not set(train) & set(test)
    even = [draw_task("numbers", "train", k, make, key, accept=lambda t: t % 2 == 0) for k in range(50)]
    assert all(t % 2 == 0 for t in even)


def test_partition_tasks_places_each_item_by_its_content_key():
    from envgym.core import partition_tasks

    items = list(range(500))
    tasks = partition_tasks(items, lambda n: f"n|{n}", 0.2)
    assert sorted(tasks["train"] + tasks["test"]) == items
    assert all(split_of(f"n|{n}", 0.2) == split for split in tasks for n in tasks[split])
    assert tasks["test"] == sorted(tasks["test"]) and 50 < len(tasks["test"]) < 150
