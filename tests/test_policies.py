"""Policies: HF sampling and scoring agree, baselines, spec parsing, and an OpenAI endpoint that misbehaves."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from envgym.models import tiny_model, word_level_tokenizer
from envgym.policies import (ContextOverflow, HFPolicy, PolicyError, RandomPolicy, SamplingParams, ScriptedPolicy,
                             TextRequest, load_policy)
from envgym.policies.openai_chat import OpenAIChatPolicy


@pytest.fixture(scope="module")
def tiny():
    tokenizer = word_level_tokenizer(["a", "b", "c", "d", "e"])
    return HFPolicy(tiny_model(tokenizer), tokenizer)


def test_generated_logprobs_equal_teacher_forced_scores_despite_padding(tiny):
    torch.manual_seed(0)
    prompts = [[1, 6, 4, 10, 11], [1, 6, 4, 10, 11, 12, 13, 12, 2, 4, 1, 7, 4]]  # left padding on the first
    completions = tiny.generate(prompts, SamplingParams(max_new_tokens=6))
    scores = tiny.score(prompts, [c.token_ids for c in completions])
    for completion, score in zip(completions, scores):
        assert len(completion.logprobs) == len(completion.token_ids) > 0
        assert completion.logprobs == pytest.approx(score, abs=1e-4)
    alone = tiny.score(prompts[:1], [completions[0].token_ids])[0]
    assert alone == pytest.approx(scores[0], abs=1e-4)


def test_greedy_is_deterministic_and_length_is_reported(tiny):
    params = SamplingParams(temperature=0, max_new_tokens=4)
    first = tiny.generate([[1, 6, 4]], params)[0]
    assert tiny.generate([[1, 6, 4]], params)[0] == first
    if tiny.tokenizer.eos_token_id not in first.token_ids:
        assert first.finish_reason == "length" and len(first.token_ids) == 4


def test_checkpoint_generation_defaults_do_not_change_the_sampling_distribution(tiny):
    tiny.model.generation_config.top_k = 1  # as a generation_config.json could set; must not make sampling greedy
    try:
        torch.manual_seed(0)
        params = SamplingParams(temperature=1.0, max_new_tokens=8)
        greedy = tiny.generate([[1, 6, 4]], SamplingParams(temperature=0, max_new_tokens=8))[0].token_ids
        samples = [c.token_ids for c in tiny.generate([[1, 6, 4]] * 8, params)]
    finally:
        tiny.model.generation_config.top_k = None
    assert any(s != greedy for s in samples)


def test_eos_ends_a_completion_with_reason_stop(tiny):
    # bias the model so that the end token is (almost) certain
    lm_head_bias = torch.zeros(len(tiny.tokenizer))
    lm_head_bias[tiny.tokenizer.eos_token_id] = 100.0
    handle = tiny.model.lm_head.register_forward_hook(lambda module, inputs, output: output + lm_head_bias)
    try:
        completion = tiny.generate([[1, 6, 4]], SamplingParams(max_new_tokens=5))[0]
    finally:
        handle.remove()
    assert completion.token_ids == [tiny.tokenizer.eos_token_id] and completion.finish_reason == "stop"
    assert completion.text == ""


def test_sampling_params_refuse_nonsense():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(TypeError, match="tuple of strings"):
        SamplingParams(stop="\n")


def request(info=None, oracle=lambda: "north", messages=(), sample_action=None):
    return TextRequest(messages, info or {}, oracle, *([sample_action] if sample_action else []))


def test_random_policy_plays_admissible_actions_else_the_env_sample_and_scripted_asks_the_oracle():
    policy = RandomPolicy(seed=1)
    replies = policy.act([request({"admissible_actions": ["east", "west"]}) for _ in range(50)])
    assert {r.text for r in replies} == {"east", "west"} and {r.source for r in replies} == {RandomPolicy.ADMISSIBLE}
    seeds = []
    sampled = policy.act([request(sample_action=lambda seed: (seeds.append(seed), f"guess {seed % 7}")[1])
                          for _ in range(3)])
    assert [r.text for r in sampled] == [f"guess {seed % 7}" for seed in seeds] and len(set(seeds)) == 3
    assert {r.source for r in sampled} == {RandomPolicy.ENV_SAMPLE}
    free = policy.act([request()])[0]  # the env has neither: random letters, said so
    assert free.text.isalpha() and 1 <= len(free.text) <= 8 and free.source == RandomPolicy.LETTERS
    assert [r.text for r in RandomPolicy(seed=1).act([request(sample_action=lambda s: str(s))] * 4)] == \
        [r.text for r in RandomPolicy(seed=1).act([request(sample_action=lambda s: str(s))] * 4)]  # seeded
    assert ScriptedPolicy().act([request()]) == ["north"]

    def broken():
        raise NotImplementedError("no oracle here")

    assert isinstance(ScriptedPolicy().act([request(oracle=broken)])[0], PolicyError)


def test_load_policy_specs():
    assert isinstance(load_policy("random"), RandomPolicy)
    assert isinstance(load_policy("scripted"), ScriptedPolicy)
    with pytest.raises(ValueError, match="unknown policy spec 'gpt'"):
        load_policy("gpt")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_policy("hf:/nonexistent/model")
    with pytest.raises(ValueError, match="needs a model after '#'"):
        load_policy("openai:http://127.0.0.1:1/v1")


def test_hf_specs_name_any_model_the_loader_knows():
    from envgym.evaluation import check_policy_spec
    from envgym.models import ModelLoadError

    policy = load_policy("hf:tiny-guess")
    assert isinstance(policy, HFPolicy) and policy.model.config.vocab_size == len(policy.tokenizer)
    check_policy_spec("hf:envgym-tests/never-cached")  # a hub id is checked when it loads, not before
    with pytest.raises(ModelLoadError, match="'envgym-tests/never-cached': not a local directory, not in the local "
                                             "Hugging Face cache, and the hub cannot be reached"):
        load_policy("hf:envgym-tests/never-cached")
    with pytest.raises(ValueError, match="there is no directory '/nonexistent'"):
        check_policy_spec("hf:/nonexistent")


def test_hf_checkpoint_directory_round_trip(tmp_path, tiny):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_policy(f"hf:{tmp_path}")
    prompt, params = [[1, 6, 4]], SamplingParams(temperature=0, max_new_tokens=3)
    assert loaded.generate(prompt, params) == tiny.generate(prompt, params)


def test_vllm_policy_names_the_extra_when_vllm_is_missing():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"envgym\[vllm\]"):
            load_policy("vllm:/some/model")
    else:
        pytest.skip("vllm is installed; tests/test_vllm.py covers the engine")


# ------------------------------------------------------------------ OpenAI-compatible endpoint

#: Overflow answers as the servers send them (llama.cpp's server; vLLM's OpenAI server).
OVERFLOWS = {
    "overflow-llama": {"error": {"code": 400, "message": "the request exceeds the available context size, try "
                                 "increasing it", "type": "exceed_context_size_error", "n_prompt_tokens": 4121,
                                 "n_ctx": 4096}},
    "overflow-vllm": {"error": {"message": "This model's maximum context length is 512 tokens. However, your "
                                "prompt contains 530 input tokens, which exceeds this limit even without any "
                                "output tokens. Please reduce the length of the input prompt.",
                                "type": "BadRequestError", "param": "input_tokens", "code": 400}},
}


class FakeEndpoint(BaseHTTPRequestHandler):
    """Behaviour by model name: ok, flaky (503 then ok), refuse (400), down (500), slow (sleeps), queue (sleeps
    0.3 s, counting the requests in flight at once in `most_in_flight`), caller (offered tools: calls the
    first with {"code": "print(6*7)"}), junk, cut (finish_reason length), overflow-* (OVERFLOWS). /models lists
    ok (max_model_len 512) and cut; usage counts one token per word."""

    calls: dict = {}
    in_flight = most_in_flight = 0
    lock = threading.Lock()

    def do_GET(self):
        FakeEndpoint.calls["GET " + self.path] = FakeEndpoint.calls.get("GET " + self.path, 0) + 1
        if self.path != "/v1/models":
            return self._send(404, {"error": {"message": "not found"}})
        self._send(200, {"object": "list", "data": [{"id": "ok", "object": "model", "max_model_len": 512},
                                                    {"id": "cut", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = body["model"]
        FakeEndpoint.calls[model] = FakeEndpoint.calls.get(model, 0) + 1
        if model == "refuse" or (model == "flaky" and FakeEndpoint.calls[model] == 1) or model == "down":
            code = {"refuse": 400, "flaky": 503, "down": 500}[model]
            return self._send(code, {"error": {"message": f"{model} says no"}})
        if model in OVERFLOWS:
            return self._send(400, OVERFLOWS[model])
        if model == "slow":
            time.sleep(1.0)
        if model == "queue":
            with FakeEndpoint.lock:
                FakeEndpoint.in_flight += 1
                FakeEndpoint.most_in_flight = max(FakeEndpoint.most_in_flight, FakeEndpoint.in_flight)
            time.sleep(0.3)
            with FakeEndpoint.lock:
                FakeEndpoint.in_flight -= 1
        if model == "junk":
            return self._send(200, {"choices": []})
        if model == "caller" and body.get("tools"):
            call = {"id": "call-1", "type": "function",
                    "function": {"name": body["tools"][0]["function"]["name"],
                                 "arguments": json.dumps({"code": "print(6*7)"})}}
            return self._send(200, {"choices": [{"message": {"role": "assistant", "content": None,
                                                             "tool_calls": [call]}, "finish_reason": "tool_calls"}]})
        last = body["messages"][-1]["content"]
        reply = f"echo {last}"
        prompt = sum(len(m["content"].split()) for m in body["messages"])
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": reply},
                                      "finish_reason": "length" if model == "cut" else "stop"}],
                         "usage": {"prompt_tokens": prompt, "completion_tokens": len(reply.split()),
                                   "total_tokens": prompt + len(reply.split())}})

    def _send(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out first, as the timeout test wants
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def chat(text):
    return request(messages=({"role": "system", "content": "rules"}, {"role": "user", "content": text}))


def test_openai_policy_sends_tool_schemas_when_asked_and_reads_tool_calls_back_as_text(endpoint):
    from envgym.tools import Tool, ToolCall, ToolSet

    schema = {"type": "function", "function": {"name": "python", "description": "Run Python.", "parameters": {
        "type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}}
    with_tools = request(messages=({"role": "user", "content": "six times seven?"},), info={"tools": [schema]})
    [plain] = OpenAIChatPolicy(endpoint, "caller").act([with_tools])
    assert plain.text == "echo six times seven?"  # by default the schemas stay home
    [called] = OpenAIChatPolicy(endpoint, "caller", tools=True).act([with_tools])
    assert called.text == '<tool_call>{"name": "python", "arguments": {"code": "print(6*7)"}}</tool_call>'
    tool = Tool("python", "Run Python.", schema["function"]["parameters"], lambda code: code)
    assert ToolSet([tool]).parse(called.text) == [ToolCall("python", {"code": "print(6*7)"}, called.text)]


def test_openai_policy_answers_and_retries_transient_errors(endpoint):
    FakeEndpoint.calls.clear()
    policy = load_policy(f"openai:{endpoint}#ok")
    replies = policy.act([chat("a"), chat("b")])
    assert [r.text for r in replies] == ["echo a", "echo b"]
    assert [(r.finish_reason, r.prompt_tokens, r.completion_tokens) for r in replies] == [("stop", 2, 2)] * 2
    flaky = OpenAIChatPolicy(endpoint, "flaky", backoff=0.01)
    assert [r.text for r in flaky.act([chat("c")])] == ["echo c"] and FakeEndpoint.calls["flaky"] == 2
    cut = OpenAIChatPolicy(endpoint, "cut").act([chat("d")])[0]
    assert cut.finish_reason == "length" and cut.text == "echo d"


def test_openai_policy_checks_the_model_name_once_and_reads_the_context_window(endpoint, caplog):
    FakeEndpoint.calls.clear()
    served = OpenAIChatPolicy(endpoint, "ok")
    assert served.context_window is None  # nothing is read before the first call
    with caplog.at_level("WARNING", logger="envgym.policies.openai_chat"):
        served.act([chat("a")])
        served.act([chat("b")])
    assert served.context_window == 512 and served.served_models == ["ok", "cut"] and not caplog.records
    assert FakeEndpoint.calls["GET /v1/models"] == 1
    wrong = OpenAIChatPolicy(endpoint, "refuse", backoff=0.01)
    with caplog.at_level("WARNING", logger="envgym.policies.openai_chat"):
        wrong.act([chat("a")])
    assert len(caplog.records) == 1 and "the endpoint serves 'ok', 'cut', not 'refuse'" in caplog.text
    assert wrong.context_window is None
    caplog.clear()
    no_list = OpenAIChatPolicy(endpoint + "/elsewhere", "ok", backoff=0.01, max_retries=0)
    with caplog.at_level("WARNING", logger="envgym.policies.openai_chat"):
        no_list.act([chat("a")])  # a 404 at /models: nothing to check, nothing said
    assert not caplog.records and no_list.served_models == [] and no_list.context_window is None


@pytest.mark.parametrize("model", sorted(OVERFLOWS))
def test_a_context_overflow_answer_is_recognised_and_never_retried(endpoint, model):
    FakeEndpoint.calls.clear()
    reply = OpenAIChatPolicy(endpoint, model, backoff=0.01).act([chat("x")])[0]
    assert isinstance(reply, ContextOverflow) and "HTTP 400" in str(reply)
    assert FakeEndpoint.calls[model] == 1


def test_openai_policy_refusals_and_timeouts_become_policy_errors(endpoint):
    FakeEndpoint.calls.clear()
    refused = OpenAIChatPolicy(endpoint, "refuse", backoff=0.01).act([chat("x")])[0]
    assert isinstance(refused, PolicyError) and "HTTP 400" in str(refused) and "refuse says no" in str(refused)
    assert not isinstance(refused, ContextOverflow)  # a refusal is a failure, not the end of the context
    assert FakeEndpoint.calls["refuse"] == 1  # a 400 is not retried
    down = OpenAIChatPolicy(endpoint, "down", backoff=0.01, max_retries=2).act([chat("x")])[0]
    assert "HTTP 500" in str(down) and "after 3 attempts" in str(down) and FakeEndpoint.calls["down"] == 3
    slow = OpenAIChatPolicy(endpoint, "slow", timeout=0.2, backoff=0.01, max_retries=1).act([chat("x")])[0]
    assert isinstance(slow, PolicyError) and "timeout 0.2s" in str(slow)
    junk = OpenAIChatPolicy(endpoint, "junk").act([chat("x")])[0]
    assert isinstance(junk, PolicyError) and "malformed answer" in str(junk)
    closed = OpenAIChatPolicy("http://127.0.0.1:9/v1", "ok", backoff=0.01, max_retries=0).act([chat("x")])[0]
    assert isinstance(closed, PolicyError) and "no answer" in str(closed)


def test_openai_policy_in_a_rollout(endpoint):
    from envgym.rollout import collect_groups

    result = collect_groups("games/GuessNumber-v0", load_policy(f"openai:{endpoint}#ok"), n_groups=1, group_size=2,
                            max_turns=2)
    episode = result.groups[0].episodes[0]
    assert episode.turns[0].action == "echo Guess the secret integer between 1 and 100."  # the env reads "1"
    assert (episode.turns[1].observation if len(episode.turns) > 1 else episode.final_observation).startswith("1 is")
    refused = collect_groups("games/GuessNumber-v0", OpenAIChatPolicy(endpoint, "refuse"), n_groups=1, group_size=1,
                             retries=1)
    assert refused.groups == [] and "HTTP 400" in refused.failures[0].cause
