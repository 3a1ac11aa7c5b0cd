"""The training loop end to end on a micro config: it runs, logs, checkpoints, and fails early on bad input."""

import json
import math

import pytest
import torch

import envgym
from envgym.trainers import ConfigError, Trainer, config_from_dict
from envgym.trainers.batch import RolloutBatch
from envgym.trainers.checkpoint import CheckpointMismatch, latest_checkpoint

MICRO = {"iterations": 2, "threads": 1,
         "env": {"id": "games/Maze-v0", "kwargs": {"size": 3}, "max_turns": 3, "show_admissible": True},
         "rollout": {"n_groups": 2, "group_size": 2, "max_new_tokens": 2, "context": "window", "window": 0},
         "optim": {"epochs": 1, "micro_batch_tokens": 1024}, "eval": {"every": 2, "episodes": 4},
         "checkpoint": {"every": 1}}


def micro(tmp_path, overrides=()):
    return config_from_dict({**MICRO, "out_dir": str(tmp_path / "run")}, overrides)


def test_fit_logs_metrics_curve_tensorboard_and_checkpoints(tmp_path):
    history = Trainer(micro(tmp_path)).fit()
    run = tmp_path / "run"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in lines] == ["init", "rl", "rl"] and lines == history
    for key in ("train/success", "train/return", "train/turns", "train/invalid_rate", "adv/mean", "adv/std",
                "loss/kl", "loss/entropy", "loss/clip_fraction", "perf/update_tokens_per_s", "time/env",
                "time/model", "time/weight_sync", "perf/peak_rss_gb"):
        assert key in lines[1], key
    assert lines[1]["perf/peak_rss_gb"] > 0.1  # a Python process with torch holds well over 100 MiB
    assert "eval/success" in lines[2] and lines[2]["time/eval"] > 0 and lines[0]["time/eval"] > 0
    assert (run / "learning_curve.png").stat().st_size > 1000
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert latest_checkpoint(run).name == "iter_000002"


def test_eval_initial_false_skips_the_evaluation_before_training(tmp_path):
    history = Trainer(micro(tmp_path, ["eval.initial=false", "iterations=1", "eval.every=1"])).fit()
    assert [m["phase"] for m in history] == ["rl"] and "eval/success" in history[0]


def test_first_update_recomputes_the_rollout_logprobs(tmp_path):
    """Ratio 1 before the first step: the update sees exactly the tokens and logprobs the rollout sampled."""
    trainer = Trainer(micro(tmp_path, ["optim.lr=0.0"]))
    metrics = trainer.train_iteration()
    assert metrics["loss/ratio"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["loss/clip_fraction"] == 0.0


def test_kl_to_reference_and_lora(tmp_path):
    trainer = Trainer(micro(tmp_path, ["loss.kl_coef=0.1", "loss.entropy_coef=0.1", "model.lora.r=4", "optim.lr=1e-2",
                                    "optim.epochs=2"]))
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in trainer.model.parameters()) / 5
    metrics = trainer.train_iteration()
    assert metrics["loss/kl"] > 0  # the second epoch has moved away from the reference (the LoRA base)


@pytest.mark.parametrize("override, message", [
    ("env.id=games/Mazee-v0", "did you mean 'games/Maze-v0'"),
    ("env.kwargs={size: 1}", "size must be >= 2"),
    ("optim.micro_batch_tokens=20", "set optim.micro_batch_tokens >= "),
    ("model.name=no/such/dir", "expected one of tiny-maze, tiny-guess"),
    ("model.name=envgym-tests/never-cached", "model.name is 'envgym-tests/never-cached': not a local directory, "
                                                 "not in the local Hugging Face cache, and the hub cannot be reached"),
])
def test_bad_configs_fail_before_training(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        Trainer(micro(tmp_path, [override]))


TOOL_ENV = ["env.id=tools/MathPython-v0", "env.kwargs={}", "env.show_admissible=false"]


@pytest.mark.parametrize("overrides, message", [
    (["model.name={tmp}/garbage"],
     "model.name is '{tmp}/garbage', a directory AutoTokenizer cannot load from (OSError: It looks like the config "
     "file at '{tmp}/garbage/config.json' is not a valid JSON file.); expected a directory written by save_pretrained"),
    (["model.name={tmp}/empty"], "model.name is '{tmp}/empty', a directory AutoTokenizer cannot load from ("),
    # tiny-maze's template drops the system message, and with it the instructions that describe the tools
    (TOOL_ENV, "model.name: the chat template of model 'tiny-maze' leaves the tools of tools/MathPython-v0 "
               "(python) out of the prompt"),
])
def test_a_model_that_cannot_load_or_show_the_tools_fails_before_any_work(tmp_path, monkeypatch, overrides,
                                                                            message):
    import envgym.trainers.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "make_pool", lambda *a, **k: pytest.fail("the env pool started"))
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "config.json").write_text('{"model_type": "llama", ')
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as error:
        Trainer(micro(tmp_path, [o.replace("{tmp}", str(tmp_path)) for o in overrides]))
    assert message.replace("{tmp}", str(tmp_path)) in str(error.value)
    assert "\n" not in str(error.value)


def test_a_run_says_every_few_seconds_what_it_is_doing_also_into_a_file(tmp_path, monkeypatch, capsys):
    """The heartbeat: a line naming the iteration, the phase and its progress, on a stream that is no terminal."""
    import re
    import time

    import envgym.trainers.run_log as run_log

    monkeypatch.setattr(run_log, "HEARTBEAT_S", 0.01)
    progress = run_log.Heartbeat.progress

    def slow_progress(heartbeat, done, total=None):  # every phase outlasts its progress by several heartbeats
        progress(heartbeat, done, total)
        time.sleep(0.05)

    monkeypatch.setattr(run_log.Heartbeat, "progress", slow_progress)
    Trainer(micro(tmp_path, ["iterations=1"])).fit()
    out = capsys.readouterr().out
    for line in (r"iteration 0/1 init, 4/4 episodes, [\d.]+ episodes/min, 0m0\ds in this phase",
                 r"iteration 1/1 rollout, 4/4 episodes, [\d.]+ episodes/min",
                 r"iteration 1/1 update, \d+/\d+ rows, [\d.]+ rows/min",
                 r"iteration 1/1 eval, 4/4 episodes"):
        assert re.search(rf"^\[\d\d:\d\d:\d\d\] {line}", out, re.MULTILINE), (line, out[-2000:])


def test_nan_loss_stops_the_run_and_saves_the_batch(tmp_path, monkeypatch):
    import envgym.trainers.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "compute_advantages",
                        lambda batch, *a, **k: torch.full((batch.num_turns,), float("nan")))
    trainer = Trainer(micro(tmp_path))
    with pytest.raises(FloatingPointError, match="iteration 0: loss is nan"):
        trainer.train_iteration()
    saved = torch.load(tmp_path / "run" / "nan_batch_iter000000.pt", weights_only=False)
    assert saved["iteration"] == 0 and saved["batch"].input_ids.numel() > 0


def test_resume_from_a_checkpoint_of_another_config_fails(tmp_path):
    Trainer(micro(tmp_path, ["iterations=1"])).fit()
    with pytest.raises(CheckpointMismatch, match="rollout.group_size: checkpoint has 2, this config has 3"):
        Trainer(micro(tmp_path, ["rollout.group_size=3"]), resume=True)


@pytest.mark.parametrize("overrides", [
    # "before": the PRM is updated on this batch first, so its rewards already differ between episodes
    ["algorithm.estimator=prime", "algorithm.options={}", "turn_reward.kind=implicit_prm",
     "turn_reward.prm_update=before"],
    ["algorithm.estimator=igpo", "algorithm.options={}", "turn_reward.kind=info_gain", "model.name=tiny-guess",
     "env.id=games/GuessNumber-v0", "env.kwargs={high: 16}", "env.show_admissible=false", "rollout.context=full"],
])
def test_turn_reward_models_feed_the_estimator(tmp_path, overrides):
    metrics = Trainer(micro(tmp_path, overrides)).train_iteration()
    assert ("prm/loss" in metrics) or ("info_gain/answer_prob_first" in metrics)
    assert metrics["adv/std"] > 0


def test_kl_reference_is_the_warm_started_policy_also_after_resume(tmp_path):
    overrides = ["iterations=1", "sft.steps=3", "sft.episodes=4", "loss.kl_coef=0.1", "eval.episodes=2"]
    first = Trainer(micro(tmp_path, overrides))
    initial = [p.clone() for p in first.model.parameters()]
    first.fit()
    reference = list(first.reference.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(initial, reference))  # not the pre-SFT model
    resumed = Trainer(micro(tmp_path, overrides), resume=True)
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed.reference.parameters()))


def test_gigpo_learns_the_local_view_maze_beyond_its_warm_start(tmp_path):
    """The quickstart in miniature (3x3 mazes, 12 iterations): RL must beat the checkpoint it started from."""
    config = config_from_dict({
        "iterations": 12, "threads": 1, "out_dir": str(tmp_path / "run"),
        "env": {"id": "games/Maze-v0", "kwargs": {"size": 3, "loops": 0.5, "view": "local"}, "max_turns": 8},
        "rollout": {"n_groups": 8, "group_size": 8, "max_new_tokens": 2, "context": "window", "window": 0},
        "algorithm": {"estimator": "gigpo", "options": {"gamma": 0.95, "invalid_penalty": 0.1}},
        "optim": {"lr": 3e-4, "epochs": 2, "minibatches": 4},
        "sft": {"steps": 10, "episodes": 128, "batch_tokens": 2048},
        "eval": {"every": 12, "episodes": 200, "temperature": 1.0}, "checkpoint": {"every": 12}})
    history = Trainer(config).fit()
    warm = next(m["eval/success"] for m in history if m["phase"] == "sft")
    final = history[-1]["eval/success"]
    assert final >= warm + 0.15, (warm, final)


def test_eval_plays_a_small_split_several_times_when_sampling(tmp_path):
    overrides = ["env.id=games/GuessNumber-v0", "env.kwargs={low: 1, high: 16}", "env.show_admissible=false",
                 "model.name=tiny-guess", "eval.episodes=7"]
    sampled = Trainer(micro(tmp_path, [*overrides, "eval.temperature=1.0"])).evaluate()
    greedy = Trainer(micro(tmp_path, [*overrides, "eval.temperature=0.0"])).evaluate()
    assert envgym.make("games/GuessNumber-v0", low=1, high=16).unwrapped.num_tasks["test"] == 2
    assert sampled["eval/episodes"] == 8 and greedy["eval/episodes"] == 2  # 2 tasks x ceil(7 / 2), 2 tasks x 1


def test_eval_settings_of_a_run_are_the_ones_envgym_eval_config_builds_from_its_config(tmp_path, monkeypatch):
    """`Trainer.evaluate` plays `TrainConfig.eval_settings()`, which `envgym eval --config` rebuilds from the
    checkpoint's config.yaml, so a checkpoint is evaluated there as its run evaluated it."""
    import yaml

    import envgym.trainers.trainer as trainer_module
    from envgym.cli import build_parser, eval_settings
    from envgym.trainers.checkpoint import config_dict

    config = micro(tmp_path, ["eval.episodes=3", "eval.temperature=0.5", "env.kwargs={size: 3, view: local}",
                              "env.extract_action=admissible", "rollout.window=2", "rollout.retries=1"])
    played, evaluate_policy = [], trainer_module.evaluate_policy
    monkeypatch.setattr(trainer_module, "evaluate_policy",
                        lambda env, policy, settings, **kw: played.append(settings) or evaluate_policy(
                            env, policy, settings, **kw))
    with Trainer(config) as run:
        run.evaluate()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_dict(config)))
    args = build_parser().parse_args(["eval", "--config", str(path), "--policy", "scripted"])
    assert played == [config.eval_settings()] and eval_settings(args) == (["games/Maze-v0"], played[0])
    assert (played[0].episodes, played[0].sampling.temperature, played[0].window) == (3, 0.5, 2)


def test_env_extract_action_wraps_the_training_env(tmp_path):
    from envgym.trainers.config import EnvOptions
    from envgym.trainers.trainer import env_maker

    env = env_maker(EnvOptions(id="games/Maze-v0", kwargs={"size": 3}, extract_action="admissible"))()
    _, info = env.reset(seed=0, options={"split": "test", "task": 0})
    _, _, _, _, info = env.step(f"Let's head {info['admissible_actions'][0]} now.")
    assert not info["invalid_action"]
    with pytest.raises(ConfigError, match="env.extract_action"):
        micro(tmp_path, ["env.extract_action=regex"])


def estimator_cases():
    """(estimator, options): the defaults and each non-default value of every choice option, and each preset."""
    from envgym.trainers.advantages import ESTIMATORS

    cases = []
    for name, spec in ESTIMATORS.items():
        cases.append((name, {}))
        for key, values in spec.choices.items():
            for value in values[1:]:
                options = {key: value}
                if (key, value) == ("penalty_scope", "step_and_outcome"):
                    options["episode_stats"] = "turns"  # it scores turn rows; alone it is rejected (below)
                cases.append((name, options))
        cases += [(name, {"preset": preset}) for preset in spec.presets]
    return cases


TURN_REWARD_OF = {"igpo": ["turn_reward.kind=info_gain", "model.name=tiny-guess", "env.id=games/GuessNumber-v0",
                           "env.kwargs={high: 16}", "env.show_admissible=false", "rollout.context=full"],
                  "prime": ["turn_reward.kind=implicit_prm"],
                  "vineppo": ["rollout.branch.k=2"], "spo_tree": ["rollout.branch.k=2"]}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["none", "igpo", "prime", "vineppo", "spo_tree"])
def test_every_estimator_and_option_trains_one_iteration(tmp_path, kind):
    """Every option the config accepts works in training: tokens for whiten_over, texts for similarity, ..."""
    cases = [c for c in estimator_cases() if (c[0] if c[0] in TURN_REWARD_OF else "none") == kind]
    trainer = Trainer(micro(tmp_path, [f"algorithm.estimator={cases[0][0]}", *TURN_REWARD_OF.get(kind, [])]))
    for name, options in cases:
        preset = options.pop("preset", None)
        config = config_from_dict({**MICRO, "out_dir": str(tmp_path / "run"),
                                   "algorithm": {"estimator": name, "preset": preset, "options": options}},
                                  TURN_REWARD_OF.get(kind, []))
        trainer.config.algorithm = config.algorithm
        metrics = trainer.train_iteration()
        assert all(map(math.isfinite, (metrics["adv/mean"], metrics["loss/policy"]))), (name, options, metrics)


@pytest.mark.parametrize("estimator, trained", [("vineppo", "roots"), ("spo_tree", "all")])
def test_branching_estimators_train_on_branched_rollouts(tmp_path, estimator, trained):
    trainer = Trainer(micro(tmp_path, [f"algorithm.estimator={estimator}", "rollout.branch.k=2",
                                       "rollout.branch.turns=[1]"]))
    rollout = trainer.collect()
    batch = RolloutBatch.from_groups(rollout.groups, pad_token_id=trainer.policy.pad_token_id)
    rows = trainer._trained_rows(batch)
    roots = [r for r, e in enumerate(batch.row_episode) if batch.episodes[e].parent is None]
    assert rollout.metrics["branches"] > 0 and rows == (roots if trained == "roots" else None)
    metrics = trainer.train_iteration()
    assert metrics["train/episodes"] == 4 and math.isfinite(metrics["loss/policy"])


@pytest.mark.parametrize("trained", ["all", "roots"])
def test_every_epoch_trains_every_row_it_is_given(tmp_path, trained):
    # the update's row list must survive its minibatch loop: each epoch sees each trained row exactly once
    trainer = Trainer(micro(tmp_path, ["optim.epochs=3", "optim.minibatches=2"]))
    batch = RolloutBatch.from_groups(trainer.collect().groups, pad_token_id=trainer.policy.pad_token_id)
    given = None if trained == "all" else list(range(0, batch.num_rows, 2))
    seen = []
    micro_batches = trainer.dp.micro_batches
    trainer.dp.micro_batches = lambda b, rows, tokens: (seen.extend(rows), micro_batches(b, rows, tokens))[1]
    trainer.update(batch, torch.ones(len(batch.turns.reward)), given)
    expected = sorted(range(batch.num_rows) if given is None else given) * 3
    assert sorted(seen) == sorted(expected)


def test_skip_zero_advantage_steps_only_where_every_advantage_is_zero(tmp_path):
    """optim.skip_zero_advantage: a minibatch whose turns all have advantage 0 leaves the weights and AdamW's state
    as they were; a minibatch with one nonzero turn steps; with an entropy term nothing is skipped."""
    trainer = Trainer(micro(tmp_path, ["optim.skip_zero_advantage=true", "optim.minibatches=2", "optim.lr=1e-2"]))
    batch = RolloutBatch.from_groups(trainer.collect().groups, pad_token_id=trainer.policy.pad_token_id)
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    zero = torch.zeros(len(batch.turns.reward))
    metrics = trainer.update(batch, zero)
    assert metrics["optim/skipped_steps"] == 2 and "rollout/logprob_diff_mean" not in metrics
    assert all(torch.equal(p, weights[n]) for n, p in trainer.model.named_parameters() if p.requires_grad)
    assert not trainer.optimizer.state  # AdamW never stepped: no momentum to move along later
    one = zero.clone()
    one[next(iter(batch.trained_turns([0])))] = 1.0  # a turn of row 0: its minibatch steps, the other is skipped
    metrics = trainer.update(batch, one)
    assert metrics["optim/skipped_steps"] == 1 and metrics["rollout/logprob_diff_mean"] >= 0
    assert any(not torch.equal(p, weights[n]) for n, p in trainer.model.named_parameters() if p.requires_grad)
    trainer.config.loss.entropy_coef = 0.01  # the entropy term has a gradient of its own
    assert trainer.update(batch, zero)["optim/skipped_steps"] == 0


@pytest.mark.parametrize("options, message", [
    ({"gamma": 1.5}, r"algorithm: gigpo: gamma=1.5 must be a number in \[0, 1\]"),
    ({"penalty_scope": "step_and_outcome"}, "needs episode_stats='turns'"),
    ({"state_texts": ["a"]}, "unknown option 'state_texts'"),
    ({"invalid_penalty": -0.1}, "invalid_penalty=-0.1 must be a number >= 0"),
])
def test_estimator_options_fail_at_config_time(options, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"algorithm": {"estimator": "gigpo", "options": options}})


def test_learning_rate_warms_up_then_follows_a_cosine(tmp_path):
    from envgym.trainers.config import OptimOptions
    from envgym.trainers.trainer import lr_factor

    options = OptimOptions(schedule="cosine", warmup_steps=4, min_lr_ratio=0.1)
    factors = [lr_factor(step, 20, options) for step in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0] and factors[4] == 1.0
    assert factors[12] == pytest.approx(0.1 + 0.9 * 0.5) and factors[20] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))
    trainer = Trainer(micro(tmp_path, ["optim.schedule=cosine", "optim.warmup_steps=2", "optim.lr=1e-3"]))
    first = trainer.train_iteration()  # one optimizer step per iteration in the micro config
    trainer.iteration += 1
    second = trainer.train_iteration()
    assert first["optim/lr"] == pytest.approx(0.5e-3) and second["optim/lr"] == pytest.approx(1e-3)
    assert first["loss/approx_kl"] >= 0.0
