"""collect_groups: groups share task and seed, one batched policy call per turn, and the failure policy."""

import pytest

import envgym
from envgym.chat import encode
from envgym.models import tiny_model, word_level_tokenizer
from envgym.policies import (Completion, ContextOverflow, HFPolicy, PolicyError, RandomPolicy, SamplingParams,
                             TextReply, load_policy)
from envgym.rollout import collect_groups, failure_signature, group_seed
from envgym.trajectory import EpisodeEnd, FinishReason
from test_chat import THINK_DROPPING_TEMPLATE

for name, cls in {"FailOnSeed": "FailOnSeed", "FailOnce": "FailOnce", "Hangs": "HangsOnStep",
                  "Crashes": "CrashesOnStep", "Raises": "RaisesOnStep", "NoOracle": "NoOracle"}.items():
    envgym.register(f"faulty/Rollout{name}-v0", f"faulty_envs:{cls}", max_turns=10)

WORDS = ["Guess", "the", "secret", "integer", "between", "and", "1", "100", "50", "25", "is", "too", "low", "high",
         "correct", "<", ">", "/", "think", "maybe"]


class FixedTokenPolicy:
    """A TokenPolicy stub that answers every prompt with the same text, recording every call."""

    def __init__(self, tokenizer, text, eos=True, finish="stop"):
        self.tokenizer, self.calls = tokenizer, []
        self.ids = encode(tokenizer, text) + ([tokenizer.eos_token_id] if eos else [])
        self.text, self.finish = text, finish

    def generate(self, prompts, params):
        self.calls.append([list(p) for p in prompts])
        return [Completion(list(self.ids), [-0.5] * len(self.ids), self.text, self.finish) for _ in prompts]

    def score(self, prompts, continuations):
        return [[-0.5] * len(c) for c in continuations]


def test_scripted_groups_share_task_and_seed_and_win():
    result = collect_groups("games/Maze-v0", load_policy("scripted"), n_groups=3, group_size=2, split="test", seed=7)
    assert len(result.groups) == 3 and result.metrics["episodes"] == 6
    for g, group in enumerate(result.groups):
        assert group.seed == group_seed(7, g)
        assert {e.task for e in group.episodes} == {group.task}
        assert len({e.turns[0].observation for e in group.episodes}) == 1
        assert all(e.won and e.end is EpisodeEnd.TERMINATED for e in group.episodes)
    assert result.metrics["retries"] == result.metrics["dropped_groups"] == 0


@pytest.mark.slow  # building and warming up a transformers model takes ~5 s here
def test_hf_policy_sees_exactly_the_tokens_that_are_recorded():
    tokenizer = word_level_tokenizer(WORDS)
    policy = HFPolicy(tiny_model(tokenizer), tokenizer)
    prompts_seen = []
    generate = policy.generate
    policy.generate = lambda prompts, params, **keys: (prompts_seen.append([list(p) for p in prompts]),
                                                       generate(prompts, params, **keys))[1]
    result = collect_groups("games/GuessNumber-v0", policy, n_groups=2, group_size=2, split="test",
                            sampling=SamplingParams(max_new_tokens=3), max_turns=3)
    episodes = [e for g in result.groups for e in g.episodes]
    assert len(prompts_seen) == max(len(e.turns) for e in episodes)  # one batched call per turn step
    assert len(prompts_seen[0]) == 4
    for t, batch in enumerate(prompts_seen):
        live = [e for e in episodes if len(e.turns) > t]
        assert len(batch) == len(live)
        for episode, prompt in zip(live, batch):
            assert prompt == episode.row_ids(len(episode.row_starts) - 1 if t >= episode.row_starts[-1] else 0, t)
    turn = episodes[0].turns[0]
    assert len(turn.action_ids) == len(turn.logprobs) > 0 and all(lp <= 0 for lp in turn.logprobs)
    assert result.metrics["generated_tokens"] == sum(e.num_generated_tokens for e in episodes)


def test_empty_and_cut_off_actions_reach_the_env_and_are_recorded():
    tokenizer = word_level_tokenizer(WORDS)
    cut_off = FixedTokenPolicy(tokenizer, "the secret", eos=False, finish="length")
    for policy, finish in [(FixedTokenPolicy(tokenizer, ""), FinishReason.EMPTY), (cut_off, FinishReason.LENGTH)]:
        result = collect_groups("games/GuessNumber-v0", policy, n_groups=1, group_size=2, max_turns=2)
        turns = [t for e in result.groups[0].episodes for t in e.turns]
        assert len(turns) == 4 and all(t.finish is finish and t.invalid_action for t in turns)
        assert result.metrics["empty_actions" if finish is FinishReason.EMPTY else "cut_off_actions"] == 4
        assert result.metrics["invalid_actions"] == 4


def test_history_rewriting_template_falls_back_to_rows_per_turn_and_is_counted():
    tokenizer = word_level_tokenizer(WORDS, chat_template=THINK_DROPPING_TEMPLATE)
    policy = FixedTokenPolicy(tokenizer, "<think>maybe</think>50")
    result = collect_groups("games/GuessNumber-v0", policy, n_groups=1, group_size=2, max_turns=3)
    assert result.metrics["template_fallbacks"] == 2
    assert all(e.row_starts == (0, 1, 2) for e in result.groups[0].episodes)
    plain = collect_groups("games/GuessNumber-v0", FixedTokenPolicy(word_level_tokenizer(WORDS), "50"),
                           n_groups=1, group_size=2, max_turns=3)
    assert plain.metrics["template_fallbacks"] == 0 and plain.groups[0].episodes[0].row_starts == (0,)


def test_window_context_gives_one_row_per_turn():
    tokenizer = word_level_tokenizer(WORDS)
    result = collect_groups("games/GuessNumber-v0", FixedTokenPolicy(tokenizer, "50"), n_groups=1, group_size=1,
                            max_turns=3, context="window", window=1)
    assert result.groups[0].episodes[0].row_starts == (0, 1, 2)


def test_persistent_failures_drop_the_group_and_never_become_episodes():
    result = collect_groups("faulty/RolloutFailOnSeed-v0", load_policy("random"), n_groups=6, group_size=2,
                            retries=1)
    odd = [g for g in range(6) if group_seed(0, g) % 2 == 1]
    assert 0 < len(odd) < 6
    assert result.metrics["dropped_groups"] == len(odd) and len(result.groups) == 6 - len(odd)
    assert all(group.seed % 2 == 0 for group in result.groups)
    assert all(len(group.episodes) == 2 for group in result.groups)
    assert result.failures and all("cannot start from seed" in f.cause for f in result.failures)
    # both members of a bad group fail in the same reset batch: each is retried once, then the group is dropped
    assert result.metrics["retries"] == 2 * len(odd)


def test_transient_failure_is_retried_with_a_fresh_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ENVGYM_TEST_FAIL_ONCE_MARKER", str(tmp_path / "failed-once"))
    for backend in ("sync", "process"):
        (tmp_path / "failed-once").unlink(missing_ok=True)
        result = collect_groups("faulty/RolloutFailOnce-v0", load_policy("scripted"), n_groups=2, group_size=2,
                                backend=backend, num_envs=2)
        assert result.metrics["retries"] == 1 and result.metrics["dropped_groups"] == 0
        assert len(result.groups) == 2 and all(e.won for g in result.groups for e in g.episodes)
        assert "transient failure" in result.failures[0].cause


def test_process_pool_crashes_and_hangs_drop_groups_with_their_cause():
    from envgym.pool import EnvPool

    with EnvPool("faulty/RolloutHangs-v0", 2, backend="process", step_timeout=0.3) as pool:
        hung = collect_groups("faulty/RolloutHangs-v0", load_policy("random"), n_groups=1, group_size=2, pool=pool,
                              retries=0)
    assert hung.groups == [] and "timed out" in hung.failures[0].cause
    crashed = collect_groups("faulty/RolloutCrashes-v0", load_policy("random"), n_groups=1, group_size=1,
                             backend="process", retries=1)
    assert crashed.groups == [] and crashed.metrics["retries"] == 1
    assert all("exit code 3" in f.cause for f in crashed.failures)


def test_a_failure_that_repeats_at_the_same_step_is_not_retried_again():
    from envgym.pool import EnvPool

    # a hang is deterministic: the replay hangs at the same step, so the third attempt is never made
    with EnvPool("faulty/RolloutHangs-v0", 1, backend="process", step_timeout=0.3) as pool:
        hung = collect_groups("faulty/RolloutHangs-v0", load_policy("random"), n_groups=1, group_size=1, pool=pool,
                              retries=2)
    assert hung.groups == [] and [f.attempt for f in hung.failures] == [0, 1]
    assert hung.metrics["retries"] == 1 and hung.metrics["repeated_failures"] == 1
    assert "timed out" in hung.failures[1].cause and "deterministic, not retried" in hung.failures[1].cause
    # an exception whose message names the action still repeats (the quoted action is masked)
    raised = collect_groups("faulty/RolloutRaises-v0", load_policy("random"), n_groups=1, group_size=1, retries=5)
    assert len(raised.failures) == 2 and "deterministic" in raised.failures[1].cause
    # a transient failure differs from the next attempt's outcome, so retries go on as before
    assert failure_signature("step 2: step took 1.50s, past the timeout of 1s") == \
        failure_signature("step 2: step took 1.73s, past the timeout of 1s")
    assert failure_signature("step 2: x raised E") != failure_signature("step 3: x raised E")


def test_policy_errors_fail_the_episode():
    class Refuses:
        def act(self, requests):
            return [PolicyError("endpoint said 503")] * len(requests)

    result = collect_groups("games/Maze-v0", Refuses(), n_groups=2, group_size=2, retries=1)
    assert result.groups == [] and result.metrics["dropped_groups"] == 2
    assert "endpoint said 503" in result.failures[0].cause
    no_oracle = collect_groups("faulty/RolloutNoOracle-v0", load_policy("scripted"), n_groups=1, group_size=1,
                               retries=0, backend="process")
    assert no_oracle.groups == [] and "has no oracle" in no_oracle.failures[0].cause


def test_bad_arguments():
    with pytest.raises(TypeError, match="neither a TokenPolicy"):
        collect_groups("games/Maze-v0", object(), n_groups=1, group_size=1)
    with pytest.raises(ValueError, match="tasks"):
        collect_groups("games/Maze-v0", load_policy("random"), n_groups=2, group_size=1, tasks=[1])


def test_episodes_name_the_env_of_a_factory():
    import functools

    factory = functools.partial(envgym.make, "games/GuessNumber-v0", high=10)
    result = collect_groups(factory, load_policy("scripted"), n_groups=1, group_size=1)
    episode = result.groups[0].episodes[0]
    assert episode.env_id == "games/GuessNumber-v0" and episode.won and len(episode.turns) <= 4


def test_kv_cached_rollout_plays_what_fresh_prefills_play_and_frees_its_caches():
    tokenizer = word_level_tokenizer(WORDS)
    model = tiny_model(tokenizer)
    sampling = SamplingParams(temperature=0, max_new_tokens=3)
    cached = HFPolicy(model, tokenizer)
    runs = {reuse: collect_groups("games/GuessNumber-v0", policy, n_groups=2, group_size=2, split="test",
                                  sampling=sampling, max_turns=4)
            for reuse, policy in ((True, cached), (False, HFPolicy(model, tokenizer, kv_reuse=False)))}
    episodes = {reuse: [e for g in run.groups for e in g.episodes] for reuse, run in runs.items()}
    for a, b in zip(episodes[True], episodes[False], strict=True):
        assert [t.action_ids for t in a.turns] == [t.action_ids for t in b.turns]
        for ta, tb in zip(a.turns, b.turns):
            assert ta.logprobs == pytest.approx(tb.logprobs, abs=1e-4)
    metrics = runs[True].metrics
    assert metrics["prompt_tokens"] == runs[False].metrics["prompt_tokens"]
    assert 0.5 * metrics["prompt_tokens"] < metrics["cached_prompt_tokens"] < metrics["prompt_tokens"]
    assert metrics["cache_misses"] == 0 and runs[False].metrics["cached_prompt_tokens"] == 0
    assert metrics["env_workers"] == 0  # GuessNumber steps are cheaper than a pipe round trip
    assert len(cached.cache) == 0  # every episode's cache was released when it ended


def test_an_episode_that_fills_the_context_window_ends_there():
    from envgym.chat import EpisodeChat

    tokenizer = word_level_tokenizer(WORDS)
    env = envgym.make("games/GuessNumber-v0")
    first_observation, _ = env.reset(seed=0)
    first = len(EpisodeChat(tokenizer, env.unwrapped.instructions).start(first_observation)[0])
    sampling = SamplingParams(temperature=0, max_new_tokens=8)  # this greedy tiny model never ends early

    def play(window):
        policy = HFPolicy(tiny_model(tokenizer, max_positions=window), tokenizer)
        return collect_groups("games/GuessNumber-v0", policy, n_groups=1, group_size=2, max_turns=20,
                              sampling=sampling)

    cut = play(first + 5)  # room for 5 of the 8 tokens: the action is cut where the window fills
    assert cut.metrics["context_full"] == 2
    for episode in cut.groups[0].episodes:
        assert episode.end is EpisodeEnd.CONTEXT and len(episode.turns) == 1
        assert episode.turns[0].finish is FinishReason.CONTEXT and len(episode.turns[0].action_ids) == 5
    no_room = play(first + 9)  # 8 tokens fit; the env's reply does not leave room for another
    assert no_room.metrics["context_full"] == 2
    for episode in no_room.groups[0].episodes:
        assert episode.end is EpisodeEnd.CONTEXT and len(episode.turns) == 1
        assert episode.turns[0].finish is FinishReason.LENGTH and len(episode.turns[0].action_ids) == 8
    failed = play(first - 1)
    assert failed.groups == [] and f"first prompt ({first} tokens) does not fit" in failed.failures[0].cause


def test_a_context_budget_ends_token_policy_episodes_like_a_smaller_window():
    from envgym.chat import EpisodeChat

    tokenizer = word_level_tokenizer(WORDS)
    env = envgym.make("games/GuessNumber-v0")
    first_observation, _ = env.reset(seed=0)
    first = len(EpisodeChat(tokenizer, env.unwrapped.instructions).start(first_observation)[0])
    policy = HFPolicy(tiny_model(tokenizer, max_positions=4096), tokenizer)
    sampling = SamplingParams(temperature=0, max_new_tokens=8)  # this greedy tiny model never ends early
    cut = collect_groups("games/GuessNumber-v0", policy, n_groups=1, group_size=2, max_turns=20, sampling=sampling,
                         max_context_tokens=first + 5)
    assert cut.metrics["context_full"] == 2
    for episode in cut.groups[0].episodes:
        assert episode.end is EpisodeEnd.CONTEXT and len(episode.turns) == 1
        turn = episode.turns[0]
        assert turn.finish is FinishReason.CONTEXT and len(turn.action_ids) == turn.completion_tokens == 5
        assert turn.prompt_tokens == first
    failed = collect_groups("games/GuessNumber-v0", policy, n_groups=1, group_size=1, sampling=sampling, retries=2,
                            max_context_tokens=first - 1)
    assert failed.groups == [] and failed.metrics["failed_attempts"] == 1  # a replay would not fit either
    assert failed.failures[0].cause == (f"context: the first prompt ({first} tokens) does not fit the context "
                                        f"budget of {first - 1} tokens")


#: A secret of the train split: never the answer of a test task, so guessing it never wins there.
LOSING_GUESS = str(envgym.make("games/GuessNumber-v0").unwrapped._secrets["train"][0])


class WordCountingPolicy:
    """A text policy that guesses LOSING_GUESS and reports usage like an endpoint: one token per word of the
    prompt's messages, `completion` tokens written; at turn `overflow_at` (of its first `overflow_calls`
    calls) it answers ContextOverflow instead."""

    def __init__(self, completion=1, overflow_at=None, finish="stop", overflow_calls=None):
        self.completion, self.overflow_at, self.finish = completion, overflow_at, finish
        self.overflow_calls = overflow_calls
        self.prompts, self.calls = [], 0

    def act(self, requests):
        self.calls += 1
        replies = []
        for request in requests:
            self.prompts.append(list(request.messages))
            turn = sum(m["role"] == "assistant" for m in request.messages)
            if turn == self.overflow_at and (self.overflow_calls is None or self.calls <= self.overflow_calls):
                replies.append(ContextOverflow("HTTP 400: exceed_context_size_error"))
                continue
            words = sum(len(m["content"].split()) for m in request.messages)
            replies.append(TextReply(LOSING_GUESS, self.finish, words, self.completion))
        return replies


def first_prompt_words(env_id="games/GuessNumber-v0"):
    env = envgym.make(env_id)
    observation, _ = env.reset(seed=0)
    return len(env.unwrapped.instructions.split()) + len(observation.split())


def test_text_policy_turns_record_usage_and_finish_and_stay_within_the_budget():
    first = first_prompt_words()
    policy = WordCountingPolicy(finish="length")
    result = collect_groups("games/GuessNumber-v0", policy, n_groups=2, group_size=2, max_turns=50,
                            max_context_tokens=first + 40, split="test")
    episodes = [e for g in result.groups for e in g.episodes]
    assert len(episodes) == 4 and result.metrics["context_full"] == 4
    for episode in episodes:
        assert episode.end is EpisodeEnd.CONTEXT and len(episode.turns) > 2
        prompts = [t.prompt_tokens for t in episode.turns]
        assert prompts[0] == first and prompts == sorted(prompts) and prompts[-1] + 1 <= first + 40
        assert all(t.completion_tokens == 1 and t.finish is FinishReason.LENGTH for t in episode.turns)
        assert episode.num_generated_tokens == len(episode.turns)
    turns = sum(len(e.turns) for e in episodes)
    assert result.metrics["generated_tokens"] == result.metrics["cut_off_actions"] == turns
    assert result.metrics["prompt_tokens"] == sum(t.prompt_tokens for e in episodes for t in e.turns)
    assert result.metrics["retries"] == 0 and result.failures == []


def test_a_text_reply_past_the_budget_is_the_last_and_an_overflow_ends_the_episode():
    first = first_prompt_words()
    long_reply = collect_groups("games/GuessNumber-v0", WordCountingPolicy(completion=30), n_groups=1,
                                group_size=1, max_context_tokens=first + 20, split="test")
    (episode,) = long_reply.groups[0].episodes
    assert episode.end is EpisodeEnd.CONTEXT and len(episode.turns) == 1
    assert episode.turns[0].finish is FinishReason.CONTEXT and episode.turns[0].action == LOSING_GUESS
    overflow = collect_groups("games/GuessNumber-v0", WordCountingPolicy(overflow_at=2), n_groups=2, group_size=2,
                              split="test", retries=2)
    episodes = [e for g in overflow.groups for e in g.episodes]
    assert [(e.end, len(e.turns)) for e in episodes] == [(EpisodeEnd.CONTEXT, 2)] * 4
    assert overflow.metrics["context_full"] == 4 and overflow.metrics["retries"] == 0
    # the first call's prompts do not fit: groups 0 and 1 fail at once, unretried; group 2 then plays in
    # their freed slots (each slot once, though both members of a dropped group failed in one turn)
    at_once = collect_groups("games/GuessNumber-v0", WordCountingPolicy(overflow_at=0, overflow_calls=1),
                             n_groups=3, group_size=2, num_envs=4, backend="sync", retries=2, split="test",
                             max_turns=2)
    assert [g.seed for g in at_once.groups] == [group_seed(0, 2)] and len(at_once.groups[0].episodes) == 2
    assert at_once.metrics["failed_attempts"] == 2 and at_once.metrics["retries"] == 0
    assert at_once.failures[0].cause == ("context: the first prompt does not fit the policy's context window: "
                                         "HTTP 400: exceed_context_size_error")


def test_window_context_bounds_text_policy_prompts():
    policy = WordCountingPolicy()
    collect_groups("games/GuessNumber-v0", policy, n_groups=1, group_size=1, max_turns=6, split="test",
                   context="window", window=2)
    assert [len(p) for p in policy.prompts] == [2, 4, 6, 6, 6, 6]  # system + the last 2 turns + the observation
    assert policy.prompts[-1][1]["content"] == policy.prompts[-2][3]["content"]  # the window slides by a turn


def test_random_play_draws_legal_moves_from_the_env_and_counts_where_they_came_from():
    result = collect_groups("games/GuessNumber-v0", load_policy("random"), n_groups=4, group_size=2, max_turns=8,
                            backend="process", num_envs=2)
    turns = [t for g in result.groups for e in g.episodes for t in e.turns]
    assert turns and not any(t.invalid_action for t in turns)
    assert all(1 <= int(t.action) <= 100 for t in turns)
    assert result.action_sources == {RandomPolicy.ENV_SAMPLE: len(turns)}
    maze = collect_groups("games/Maze-v0", load_policy("random"), n_groups=2, group_size=1, max_turns=5)
    assert set(maze.action_sources) == {RandomPolicy.ADMISSIBLE}
