"""The OpenAI-compatible gateway and agents as rollouts: token-faithful rows, the HTTP protocol through the
real `openai` SDK, structured tool calls, bad input, and training and evaluating real agent programs."""

import json
import threading

import openai
import pytest
import torch

from envgym.agents import EpisodeClosed, collect_agent_groups
from envgym.chat import encode, render
from envgym.example_agents import chat_agent, window_agent
from envgym.gateway import Gateway
from envgym.models import HERMES_TOOLS_TEMPLATE, tiny_model, word_level_tokenizer
from envgym.policies import Completion, HFPolicy, SamplingParams
from envgym.wrappers import EnvMaker
from token_rows import stored_vs_teacher_forced

WORDS = ["tool_call", "name", "arguments", "python", "code", "answer", "print", "{", "}", ":", ",", '"', "<", ">", "/",
         "1", "2", "the", "is", "hello"]
MATH = EnvMaker("tools/MathPython-v0")
TOOLS = [{"type": "function", "function": {"name": "python", "description": "run code", "parameters": {
    "type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}}]
CALL = '<tool_call>\n{"name": "python", "arguments": {"code": "1"}}\n</tool_call>'


@pytest.fixture(scope="module")
def tokenizer():
    return word_level_tokenizer(WORDS, chat_template=HERMES_TOOLS_TEMPLATE)


@pytest.fixture(scope="module")
def policy(tokenizer):
    torch.set_num_threads(1)
    return HFPolicy(tiny_model(tokenizer), tokenizer)


@pytest.fixture(scope="module")
def gateway(policy):
    with Gateway(policy, sampling=SamplingParams(max_new_tokens=6)) as gateway:
        yield gateway


class ScriptedTokens:
    """A token policy that writes the given texts in turn (the model under test is the gateway's parsing)."""

    def __init__(self, tokenizer, texts):
        self.tokenizer, self.texts = tokenizer, list(texts)

    def generate(self, prompts, params):
        out = []
        for _ in prompts:
            ids = encode(self.tokenizer, self.texts.pop(0)) + [self.tokenizer.eos_token_id]
            out.append(Completion(ids, [-0.5] * len(ids), self.tokenizer.decode(ids, skip_special_tokens=True), "stop"))
        return out

    def score(self, prompts, continuations):
        raise NotImplementedError


@pytest.mark.parametrize("agent, one_row", [(chat_agent, True), (window_agent, False)])
def test_agent_rows_match_a_teacher_forced_pass(policy, agent, one_row):
    result = collect_agent_groups(MATH, policy, agent, n_groups=1, group_size=2, max_turns=3,
                                  sampling=SamplingParams(max_new_tokens=5))
    episodes = result.groups[0].episodes
    assert not result.failures and all(len(e.turns) == 3 for e in episodes)
    for episode in episodes:
        assert episode.row_starts == ((0,) if one_row else (0, 1, 2))  # append-only: one row; rewritten: per request
        assert stored_vs_teacher_forced(policy.model, episode) < 1e-3
        assert [t.invalid_action for t in episode.turns] == [True] * 3  # a random model's replies, as the env said
    assert result.metrics["turns"] == 6 and result.metrics["template_fallbacks"] == (0 if one_row else 2)


def test_a_request_records_the_template_rendering_and_answers_like_openai(gateway, tokenizer):
    record = gateway.open_episode()
    client = gateway.client(record)
    messages = [{"role": "system", "content": "the"}, {"role": "user", "content": "hello"}]
    reply = client.chat.completions.create(model="policy", messages=messages, tools=TOOLS, logprobs=True)
    exchange = record.exchanges[0]
    assert list(exchange.obs_ids) == encode(tokenizer, render(tokenizer, messages, True, TOOLS))  # tools rendered
    assert reply.usage.prompt_tokens == len(exchange.obs_ids)
    assert reply.usage.completion_tokens == len(exchange.action_ids) == len(reply.choices[0].logprobs.content)
    assert [c.logprob for c in reply.choices[0].logprobs.content] == list(exchange.logprobs)
    assert reply.choices[0].message.content == exchange.text == tokenizer.decode(exchange.action_ids,
                                                                                 skip_special_tokens=True)
    chunks = list(client.chat.completions.create(model="policy", messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == record.exchanges[1].text and chunks[-1].usage.completion_tokens == len(
        record.exchanges[1].action_ids)
    assert [m.id for m in client.models.list().data] == ["policy"]
    gateway.end_episode(record, "done")


def test_bad_requests_get_openai_errors(gateway, policy):
    record = gateway.open_episode()
    client = gateway.client(record)
    hello = [{"role": "user", "content": "hello"}]
    with pytest.raises(openai.NotFoundError, match="this gateway serves 'policy'"):
        client.chat.completions.create(model="gpt-4o", messages=hello)
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        client.chat.completions.create(model="policy", messages=hello, n=2)
    with pytest.raises(openai.BadRequestError, match="messages must be a non-empty list"):
        client.chat.completions.create(model="policy", messages=[])
    stranger = openai.OpenAI(base_url=f"{gateway.url}/episodes/not-an-episode/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="no open episode 'not-an-episode'"):
        stranger.chat.completions.create(model="policy", messages=hello)
    assert not record.exchanges
    gateway.end_episode(record, "done")
    with pytest.raises(openai.ConflictError, match="has ended \\(done\\)"):
        client.chat.completions.create(model="policy", messages=hello)
    with Gateway(policy, max_context_tokens=12) as small:
        record = small.open_episode()
        with pytest.raises(openai.BadRequestError, match="maximum context length is 12 tokens"):
            small.client(record).chat.completions.create(model="policy", messages=hello * 3)
        assert record.end_reason == "context"
        with pytest.raises(openai.ConflictError, match="has ended \\(context\\)"):
            small.client(record).chat.completions.create(model="policy", messages=hello)


def test_tool_calls_come_back_structured_and_tool_messages_continue_the_row(tokenizer):
    malformed_call = '<tool_call>\n{"name": python}\n</tool_call>'
    scripted = ScriptedTokens(tokenizer, ["hello\n" + CALL, "the answer", malformed_call, CALL])
    with Gateway(scripted) as gateway:
        record = gateway.open_episode()
        client = gateway.client(record)
        messages = [{"role": "user", "content": "hello"}]
        reply = client.chat.completions.create(model="policy", messages=messages, tools=TOOLS)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content == "hello"
        call = choice.message.tool_calls[0]
        assert (call.function.name, json.loads(call.function.arguments)) == ("python", {"code": "1"})
        messages += [{"role": "assistant", "content": "hello", "tool_calls": [call.model_dump()]},
                     {"role": "tool", "tool_call_id": call.id, "content": "1"}]
        client.chat.completions.create(model="policy", messages=messages, tools=TOOLS)
        second = record.exchanges[1]
        assert not second.starts_row  # the template rendered the call as sampled: the row goes on
        assert tokenizer.decode(second.obs_ids) == "\n<|im_start|>tool\n1<|im_end|>\n<|im_start|>assistant\n"
        malformed = client.chat.completions.create(model="policy", messages=messages, tools=TOOLS).choices[0]
        assert malformed.finish_reason == "stop" and malformed.message.tool_calls is None
        assert malformed.message.content == malformed_call
        assert record.malformed_tool_calls == 1
        chunks = list(client.chat.completions.create(model="policy", messages=messages, tools=TOOLS, stream=True))
        [streamed] = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls]
        assert (streamed.function.name, streamed.function.arguments) == ("python", '{"code": "1"}')
        assert chunks[-1].choices[0].finish_reason == "tool_calls"


def broken_agent(env, client):
    env.reset()
    raise ValueError("no plan for this task")


def test_an_agent_that_raises_fails_its_episode_with_the_last_line_and_is_retried(policy):
    result = collect_agent_groups(MATH, policy, broken_agent, n_groups=1, group_size=2, retries=1)
    assert not result.groups and result.metrics["dropped_groups"] == 1 and result.metrics["retries"] >= 1
    assert {f.cause for f in result.failures} == {"agent: ValueError: no plan for this task"}


def test_an_agent_that_never_returns_is_bounded_by_the_episode_timeout(policy):
    release, finished, seen = threading.Event(), threading.Event(), []

    def stuck_agent(env, client):
        env.reset()
        release.wait()  # the rollout gives up on it meanwhile
        try:
            env.step("1")
        except EpisodeClosed as exc:
            seen.append(str(exc))
        finished.set()

    result = collect_agent_groups(MATH, policy, stuck_agent, n_groups=1, group_size=1, retries=0,
                                  episode_timeout=0.2)
    release.set()
    assert finished.wait(30)
    assert not result.groups
    assert [f.cause for f in result.failures] == ["agent: did not return within rollout.episode_timeout=0.2s"]
    assert seen == ["the episode has ended (timed out)"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tiny-tools")
    tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("agent", ["envgym.example_agents:chat_agent", "envgym.example_agents:sdk_agent"])
def test_an_agent_program_trains_and_evaluates_through_the_gateway(tmp_path, model_dir, agent):
    from envgym.cli import EXIT_OK, main
    from envgym.trainers import Trainer, config_from_dict

    config = config_from_dict({
        "iterations": 1, "threads": 1, "out_dir": str(tmp_path / "run"), "model": {"name": str(model_dir)},
        "env": {"id": "tools/MathPython-v0", "max_turns": 2},
        "rollout": {"n_groups": 1, "group_size": 2, "max_new_tokens": 4, "agent": agent},
        "optim": {"epochs": 1, "micro_batch_tokens": 4096, "lr": 0.0}, "eval": {"every": 1, "episodes": 2}})
    with Trainer(config) as trainer:
        metrics = trainer.train_iteration()
        held_out = trainer.evaluate()
    assert metrics["train/episodes"] == 2 and metrics["rollout/failed_attempts"] == 0
    assert metrics["rollout/malformed_tool_calls"] >= 0 and "rollout/tool_calls" in metrics
    assert metrics["loss/ratio"] == pytest.approx(1.0, abs=1e-4)  # the update sees the rollout's own logprobs
    assert held_out["eval/episodes"] == 2 and held_out["eval/dropped_episodes"] == 0
    out = tmp_path / "eval"
    assert main(["eval", "--agent", agent, "--policy", f"hf:{model_dir}", "--env", "tools/MathPython-v0",
                 "--episodes", "2", "--max-turns", "2", "--max-new-tokens", "4", "--out", str(out)]) == EXIT_OK
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["agent"] == agent and report["results"][0]["episodes"] == 2
    assert report["results"][0]["generated_tokens"] > 0


def test_an_agent_plays_an_openai_endpoint(gateway):
    """`envgym eval --agent` against an `openai:` policy: the gateway forwards to the endpoint (here another
    gateway, a real OpenAI-compatible server) and records text and usage."""
    from envgym.evaluation import EvalSettings, evaluate

    upstream = gateway.open_episode()
    report = evaluate("tools/MathPython-v0", f"openai:{gateway.base_url(upstream)}#policy",
                      EvalSettings(agent=chat_agent, episodes=2, max_turns=2,
                                   sampling=SamplingParams(max_new_tokens=4)))
    row = report.rows[0]
    assert (row.episodes, row.dropped_episodes, row.mean_turns) == (2, 0, 2.0)
    assert row.generated_tokens == sum(len(e.action_ids) for e in upstream.exchanges) > 0
    gateway.end_episode(upstream, "done")


def test_eval_of_an_openai_policy_sends_tool_history_structured(tokenizer):
    """The built-in loop with `--send-tools`: an earlier call goes back as `tool_calls` and a `tool` message,
    which the endpoint's template renders (here the gateway's, over a policy that writes one call, then text)."""
    from envgym.evaluation import EvalSettings, evaluate

    call = '<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}\n</tool_call>'
    with Gateway(ScriptedTokens(word_level_tokenizer(WORDS + ["print", "(", ")"],
                                                     chat_template=HERMES_TOOLS_TEMPLATE), [call, "2"])) as endpoint:
        record = endpoint.open_episode()
        report = evaluate("tools/MathPython-v0", f"openai:{endpoint.base_url(record)}#policy",
                          EvalSettings(send_tools=True, episodes=1, max_turns=2))
        assert report.rows[0].invalid_action_rate == 0.5  # the call ran; "2" is no answer
        second = endpoint.tokenizer.decode(record.exchanges[1].obs_ids)
    assert not record.exchanges[1].starts_row  # the structured history renders as the call was sampled
    assert second.startswith("\n<|im_start|>tool\n") and second.endswith("\n1<|im_end|>\n<|im_start|>assistant\n")


def test_the_documented_agent_is_complete_and_plays(policy):
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "gateway.md").read_text()
    example = next(b for b in re.findall(r"```python\n(.*?)```", page, flags=re.S) if "def agent(env, client)" in b)
    assert len(example.strip().splitlines()) < 30
    namespace: dict = {}
    exec(compile(example, "docs/gateway.md", "exec"), namespace)
    result = collect_agent_groups(MATH, policy, namespace["agent"], n_groups=1, group_size=2, max_turns=2,
                                  sampling=SamplingParams(max_new_tokens=4))
    assert not result.failures and [len(e.turns) for e in result.groups[0].episodes] == [2, 2]


def test_hermes_calls_parse_one_object_or_a_list_and_anything_else_is_text():
    from envgym.tool_parsers import parse_tool_calls

    listed = parse_tool_calls('<tool_call>[{"name": "a", "arguments": {}}, {"name": "b"}]</tool_call>', "hermes", 3)
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in listed.tool_calls] == [
        ("call_3", "a", "{}"), ("call_4", "b", "{}")] and listed.content is None
    for text, why in [('<tool_call>{"name": "a"', "unclosed"), ('<tool_call>{"name": 1}</tool_call>', "string"),
                      ('<tool_call>{"name": "a", "arguments": []}</tool_call>', "must be a JSON object"),
                      ('<tool_call>{"name": "a"}</tool_call> and more', "text after")]:
        reply = parse_tool_calls(text, "hermes")
        assert (reply.content, reply.tool_calls) == (text, []) and why in reply.malformed
    assert parse_tool_calls("just words", "hermes").content == "just words"


def test_a_misnamed_agent_fails_before_anything_loads(capsys):
    from envgym.cli import EXIT_USAGE, main
    from envgym.trainers import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="rollout.agent: agent 'envgym.example_agents:nope': envgym.example_agents "
                                          "has no callable 'nope'"):
        config_from_dict({"rollout": {"agent": "envgym.example_agents:nope"}}).validate()
    with pytest.raises(ConfigError, match="set rollout.max_staleness: 0"):
        config_from_dict({"rollout": {"agent": "envgym.example_agents:chat_agent", "max_staleness": 1}}).validate()
    assert main(["eval", "--env", "tools/MathPython-v0", "--policy", "random", "--agent", "no_such_module:agent"]) \
        == EXIT_USAGE
    assert "cannot import 'no_such_module'" in capsys.readouterr().out


def test_a_prompt_over_the_budget_ends_the_agent_episode_as_a_context_ending(policy):
    first = collect_agent_groups(MATH, policy, chat_agent, n_groups=1, group_size=1, max_turns=1,
                                 sampling=SamplingParams(max_new_tokens=4))
    budget = first.groups[0].episodes[0].turns[0].prompt_tokens + 8  # room for the first reply, not the second
    result = collect_agent_groups(MATH, policy, chat_agent, n_groups=1, group_size=2, max_context_tokens=budget,
                                  sampling=SamplingParams(max_new_tokens=4))
    assert not result.failures and result.metrics["context_full"] == 2  # the agent raised on the 400: no failure
    for episode in result.groups[0].episodes:
        assert episode.end.value == "context" and len(episode.turns) == 1
        assert episode.task == first.groups[0].task


def test_the_agents_sdk_runs_a_function_tool_from_a_structured_call(tokenizer):
    """The OpenAI Agents SDK's function tools get the gateway's structured calls; the call's output goes back
    as a `tool` message and the history stays one token row. (A policy that writes a call, then a reply.)"""
    from envgym.example_agents import sdk_agent

    policy = ScriptedTokens(tokenizer, [CALL, "the answer is 2"])
    result = collect_agent_groups(MATH, policy, sdk_agent, n_groups=1, group_size=1, retries=0)
    assert not result.failures, result.failures
    [episode] = result.groups[0].episodes
    assert result.metrics["tool_calls"] == 1 and episode.row_starts == (0,)
    first, second = episode.turns
    assert not first.invalid_action  # the env ran the call the SDK made from the structured tool call
    assert tokenizer.decode(second.obs_ids).startswith("\n<|im_start|>tool\n")
    assert second.action == "the answer is 2" and episode.end.value == "truncated"  # the agent ended unsolved


def test_an_agent_that_never_uses_the_env_or_the_model_fails_saying_so(policy):
    def chatter(env, client):
        client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "hello"}])

    def idler(env, client):
        env.reset()

    for agent, cause in ((chatter, "agent: never called env.reset()"), (idler, "agent: made no model request")):
        result = collect_agent_groups(MATH, policy, agent, n_groups=1, group_size=1, retries=0,
                                      sampling=SamplingParams(max_new_tokens=2))
        assert not result.groups and [f.cause for f in result.failures] == [cause]
