"""tools/SearchQA-v0: a generated fictional world, multi-hop questions, search/open tools, F1/EM scoring."""

import pytest

import envgym
from envgym.envs.tools.search_qa import SearchQA, build_world, exact_match, f1_score, normalize_answer


@pytest.fixture(scope="module")
def env():
    return envgym.make("tools/SearchQA-v0")


def test_world_is_a_function_of_its_seed():
    a, b, c = build_world(1), build_world(1), build_world(2)
    assert a.documents == b.documents and a.questions == b.questions
    assert a.documents != c.documents
    titles = [d.title for d in a.documents]
    assert len(set(titles)) == len(titles)


def test_questions_need_the_corpus():
    world = build_world(0)
    for q in world.questions[:50]:
        assert normalize_answer(q.answer) not in normalize_answer(q.text)  # not readable off the question
        docs = {d.doc_id: d for d in world.documents}
        assert q.answer in docs[q.chain[-1]].text  # the last hop's document states it
        assert len(q.chain) >= 2


def test_oracle_searches_opens_and_wins_test_tasks(env):
    for task in range(8):
        obs, info = env.reset(seed=task, options={"split": "test", "task": task})
        assert {t["function"]["name"] for t in info["tools"]} == {"search", "open"}
        total, done, turns = 0.0, False, 0
        while not done:
            obs, reward, done, truncated, info = env.step(env.unwrapped.oracle_action())
            total += reward
            turns += 1
            assert not info["invalid_action"]
        assert total == 1.0 and info["won"] and turns >= 3


def test_tool_observations_say_what_went_wrong(env):
    env.reset(seed=0, options={"task": 0})
    obs, *_, info = env.step('<tool_call>{"name": "open", "arguments": {"doc_id": "no-such-doc"}}</tool_call>')
    assert "no document with id 'no-such-doc'" in obs and not info["invalid_action"]
    obs, *_ = env.step('<tool_call>{"name": "search", "arguments": {"query": "qqqq zzzz"}}</tool_call>')
    assert "no documents match" in obs
    obs, *_, info = env.step('<tool_call>{"name": "search", "arguments": {"q": "x"}}</tool_call>')
    assert info["invalid_action"] and "'query' is a required property" in obs


def test_state_key_follows_the_calls(env):
    _, info0 = env.reset(seed=0, options={"task": 5})
    _, _, _, _, info1 = env.step('<tool_call>{"name": "search", "arguments": {"query": "a b"}}</tool_call>')
    _, info2 = env.reset(seed=1, options={"task": 5})
    assert info0["state_key"] == info2["state_key"] != info1["state_key"]


def test_scoring():
    assert exact_match("The Quellport!", "quellport") == 1.0
    assert f1_score("Quellport Falls", "Quellport") == pytest.approx(2 / 3)
    assert f1_score("nothing", "Quellport") == 0.0
    em = SearchQA(reward="em")
    em.reset(seed=0, options={"task": 0})
    assert em.step(f"<answer>{em.gold} city</answer>")[1] == 0.0
    with pytest.raises(ValueError, match="reward must be"):
        SearchQA(reward="bleu")


def test_passes_the_env_checker():
    report = envgym.check_env("tools/SearchQA-v0")
    assert report.ok, report
