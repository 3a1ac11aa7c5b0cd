"""Evaluate policies on envs with the training rollout code (`collect_groups`) under one `EvalSettings`;
`envgym eval` calls `evaluate`, training's held-out evaluation `evaluate_policy`.

Per env and policy it reports the success rate with a 95% Wilson interval,
mean return, mean turns, pass@k (the unbiased estimator of Chen et al. 2021
over the `samples` episodes played per task), the invalid-action and cut-off
rates, the prompt and generated tokens, the episodes the context budget ended
and those dropped with their causes; `EvalReport.save(dir)` writes
report.json, report.md, report.png and every episode played (episodes/, for
`envgym view`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from envgym.agents import collect_agent_groups
from envgym.chat import ContextMode
from envgym.option_types import Range, check_ranges
from envgym.policies import Policy, SamplingParams, load_policy
from envgym.pool import Backend, EnvPool, default_num_envs
from envgym.rollout import RolloutResult, collect_groups, context_budget
from envgym.trajectory import EpisodeEnd, FinishReason, save_groups
from envgym.wrappers import EnvMaker

@dataclass(frozen=True)
class EvalSettings:
    """Every setting of an evaluation, each default stated here once; `envgym eval` and training's held-out
    evaluation both build one (a training config's through `TrainConfig.eval_settings`).

    Construction checks each number against the `Range` in its annotation (ValueError naming the setting).
    `env_kwargs`, `extract_action` and `show_admissible` make `evaluate`'s envs (`EnvMaker`);
    `request_timeout`, `request_retries`, `max_concurrency` (None: the policy's defaults, 60 s, 3 and 8) and
    `send_tools` load its `openai:` policies (see `envgym.policies.openai_chat`), `engine_args` (keywords of
    `vllm.LLM`, e.g. ``{"max_model_len": 2048}``) its `vllm:` ones; `evaluate_policy`, given a made env and a
    loaded policy, reads the rest. `sampling` is every token policy's; `max_context_tokens` bounds every prompt
    plus completion (see `envgym.rollout`: Context); `num_envs` None: `default_num_envs`; `agent` (a callable
    or "package.module:function") plays every episode with that agent program (see `envgym.agents`), each
    bounded by `episode_timeout` seconds (None or 0: no limit).
    """

    env_kwargs: dict[str, Any] = field(default_factory=dict)
    extract_action: Literal["none", "tag", "admissible"] = "none"
    show_admissible: bool = False
    split: str = "test"
    episodes: Annotated[int, Range(ge=1)] = 16
    samples: Annotated[int, Range(ge=1)] = 1
    seed: int = 0
    context: ContextMode = "full"
    window: Annotated[int, Range(ge=0)] = 4
    max_turns: Annotated[int | None, Range(ge=1)] = None
    max_context_tokens: Annotated[int | None, Range(ge=1)] = None
    backend: Backend = "auto"
    num_envs: Annotated[int | None, Range(ge=1)] = None
    step_timeout: Annotated[float, Range(gt=0)] = 60.0
    retries: Annotated[int, Range(ge=0)] = 2
    request_timeout: Annotated[float | None, Range(gt=0)] = None
    request_retries: Annotated[int | None, Range(ge=0)] = None
    max_concurrency: Annotated[int | None, Range(ge=1)] = None
    send_tools: bool = False
    engine_args: dict[str, Any] = field(default_factory=dict)
    agent: str | Callable[[Any, Any], Any] | None = None
    episode_timeout: float | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        check_ranges(self)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON values (`dataclasses.asdict`; a callable agent as "module:qualname")."""
        agent = self.agent if self.agent is None or isinstance(self.agent, str) else \
            f"{self.agent.__module__}:{self.agent.__qualname__}"
        return asdict(self) | {"agent": agent}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z = 1.96); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # the interval always holds p; clamping keeps rounding (p = 1, n = 6) from putting p outside it
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c successes: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass(frozen=True)
class EvalRow:
    """The results of one policy on one env.

    `tasks` x samples episodes were planned; `episodes` were played and
    `dropped_episodes` failed past their retries (their causes are in
    `failures`). A dropped episode counts as a loss in `success_rate`, its
    interval and pass@k, so the rate always covers the same fixed set;
    return, turns and the invalid-action and cut-off rates (the share of
    turns whose action hit `max_new_tokens`) are over the played episodes.
    `prompt_tokens` and `generated_tokens` sum what the policy counted (a
    token policy's ids, an endpoint's usage; None where nothing was
    counted, as for scripted and random play). `context_ended` counts the
    episodes the context budget ended (`context_budget` tokens: the smaller
    of `max_context_tokens` and the policy's own window; None where neither
    exists). `action_sources` counts where a policy drew its actions from
    where it says so (the random baseline).
    """

    env_id: str
    policy: str
    tasks: int
    episodes: int
    dropped_episodes: int
    success_rate: float
    success_ci95: tuple[float, float]
    mean_return: float
    mean_turns: float
    pass_at_k: dict[int, float]
    invalid_action_rate: float
    cut_off_rate: float
    prompt_tokens: int | None
    generated_tokens: int | None
    context_ended: int
    context_budget: int | None
    retries: int
    wall_time: float
    failures: list[dict[str, Any]] = field(default_factory=list)  # {"group", "episode", "attempt", "cause"}
    action_sources: dict[str, int] = field(default_factory=dict)


@dataclass
class EvalReport:
    """All rows of one evaluation and the settings that produced them."""

    rows: list[EvalRow]
    settings: dict[str, Any] = field(default_factory=dict)
    rollouts: list[RolloutResult] = field(default_factory=list, repr=False)  # per row: its episodes and failures

    def to_json(self, stored: Sequence[dict[str, Any]] = ()) -> str:
        """The report as JSON; `stored` (one dict per row, from `save`) says where each row's episodes are."""
        results = [asdict(r) | (stored[i] if i < len(stored) else {}) for i, r in enumerate(self.rows)]
        return json.dumps({"settings": self.settings, "results": results}, indent=2)

    def to_markdown(self) -> str:
        """The table, one row per env and policy, then a note per row on its context budget and where its
        actions came from, where there is one."""
        ks = sorted({k for r in self.rows for k in r.pass_at_k})
        head = ["env", "policy", "episodes", "success (95% CI)", "mean return", "mean turns",
                *[f"pass@{k}" for k in ks], "invalid actions", "cut off", "prompt tokens", "generated tokens",
                "context-ended episodes", "dropped episodes"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        notes = []
        for r in self.rows:
            lo, hi = r.success_ci95
            cells = [r.env_id, r.policy, str(r.episodes), f"{r.success_rate:.1%} ({lo:.1%}-{hi:.1%})",
                     f"{r.mean_return:.3f}", f"{r.mean_turns:.1f}",
                     *[f"{r.pass_at_k[k]:.1%}" if k in r.pass_at_k else "" for k in ks],
                     f"{r.invalid_action_rate:.1%}", f"{r.cut_off_rate:.1%}", _count(r.prompt_tokens),
                     _count(r.generated_tokens), str(r.context_ended), str(r.dropped_episodes)]
            lines.append("| " + " | ".join(cells) + " |")
            said = ([f"context budget {r.context_budget} tokens"] if r.context_budget else []) + \
                   [f"{n} actions from {source}" for source, n in r.action_sources.items()]
            if said:
                notes.append(f"- {r.env_id} · {r.policy}: " + "; ".join(said))
        return "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")

    def figure(self):
        """The chart `plot` saves: success rates with their 95% intervals as horizontal bars, one band per
        env (top to bottom in row order), one bar per policy, the legend below.

        The figure grows with the number of envs and policies, so env names and
        legend entries never overlap; the caller closes it (`plt.close(fig)`).
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        envs = list(dict.fromkeys(r.env_id for r in self.rows))
        policies = list(dict.fromkeys(r.policy for r in self.rows))
        bar = 0.8 / max(1, len(policies))
        band_inches = max(0.45, 0.22 * len(policies))  # room for every policy's bar and the env's name
        fig, ax = plt.subplots(figsize=(7.0, 1.0 + band_inches * max(1, len(envs))), layout="constrained")
        for j, name in enumerate(policies):
            rows = [r for r in self.rows if r.policy == name]
            ys = [envs.index(r.env_id) + (j - (len(policies) - 1) / 2) * bar for r in rows]
            rates = [r.success_rate for r in rows]
            errors = [[r.success_rate - r.success_ci95[0] for r in rows],
                      [r.success_ci95[1] - r.success_rate for r in rows]]
            ax.barh(ys, rates, bar, xerr=errors, capsize=2, label=name)
        ax.set_yticks(range(len(envs)), envs)
        ax.set_ylim(len(envs) - 0.5, -0.5)  # the first env on top, as in the table
        ax.set_xlim(0, 1)
        ax.set_xlabel("success rate (95% CI)")
        ax.grid(axis="x", alpha=0.3)
        fig.legend(loc="outside lower center", ncols=1 if len(policies) > 4 else len(policies), fontsize="small",
                   frameon=False)
        return fig

    def plot(self, path: str | Path) -> Path:
        """Save `figure()` as a PNG (Agg backend)."""
        import matplotlib.pyplot as plt

        fig = self.figure()
        path = Path(path)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write report.json, report.md, report.png and episodes/ into `out_dir`; returns their paths.

        Each row's episodes go to `episodes/NN_ENV_POLICY.jsonl` (`save_groups`); report.json names
        that file (`episodes_file`).
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stored = []
        for index, (row, rollout) in enumerate(zip(self.rows, self.rollouts)):
            name = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{row.env_id}_{row.policy}")[:80]
            path = save_groups(out / "episodes" / f"{index:02d}_{name}.jsonl", rollout.groups)
            stored.append({"episodes_file": path.relative_to(out).as_posix()})
        (out / "report.json").write_text(self.to_json(stored), encoding="utf-8")
        (out / "report.md").write_text(self.to_markdown(), encoding="utf-8")
        paths = {"json": out / "report.json", "markdown": out / "report.md", "chart": self.plot(out / "report.png")}
        return paths | ({"episodes": out / "episodes"} if stored else {})


def summarize(env_id: str, policy_name: str, result: RolloutResult, *, tasks: int, samples: int,
              context_budget: int | None = None) -> EvalRow:
    """One report row from the rollout of `tasks` tasks played `samples` times each (see `EvalRow`)."""
    episodes = [e for g in result.groups for e in g.episodes]
    all_turns = [t for e in episodes for t in e.turns]
    planned = tasks * samples
    wins = sum(e.won for e in episodes)
    turns = len(all_turns)
    invalid = sum(t.invalid_action for t in all_turns)
    prompts = [t.prompt_tokens for t in all_turns if t.prompt_tokens is not None]
    counted = any(t.completion_tokens is not None or t.action_ids for t in all_turns)
    ks = sorted({1, samples})
    pass_k = {k: sum(pass_at_k(len(g.episodes), sum(e.won for e in g.episodes), k) for g in result.groups) / tasks
              for k in ks} if tasks else {}
    n = len(episodes)
    return EvalRow(
        env_id=env_id, policy=policy_name, tasks=tasks, episodes=n, dropped_episodes=planned - n,
        success_rate=wins / planned if planned else 0.0, success_ci95=wilson_interval(wins, planned),
        mean_return=sum(e.total_return for e in episodes) / n if n else 0.0,
        mean_turns=turns / n if n else 0.0, pass_at_k=pass_k,
        invalid_action_rate=invalid / turns if turns else 0.0,
        cut_off_rate=sum(t.finish is FinishReason.LENGTH for t in all_turns) / turns if turns else 0.0,
        prompt_tokens=sum(prompts) if prompts else None,
        generated_tokens=sum(e.num_generated_tokens for e in episodes) if counted else None,
        context_ended=sum(e.end is EpisodeEnd.CONTEXT for e in episodes), context_budget=context_budget,
        retries=int(result.metrics["retries"]), wall_time=result.metrics["wall_time"],
        failures=[{"group": f.group, "episode": f.member, "attempt": f.attempt + 1, "cause": f.cause}
                  for f in result.failures],
        action_sources=dict(result.action_sources))


def _count(n: int | None) -> str:
    """A token count for the table: '-' where nothing was counted."""
    return "-" if n is None else str(n)


def plan_split(split_tasks: int, episodes: int, samples: int, greedy: bool) -> tuple[int, int]:
    """(tasks, samples per task) of an evaluation of `episodes` episodes on a split of `split_tasks` tasks.

    The tasks are always the first ones of the split, so two evaluations of one
    policy play the same episodes. A split smaller than `episodes` has each task
    played several times when sampling (once when greedy: repeats would be equal).
    """
    if episodes < 1 or samples < 1:
        raise ValueError(f"episodes and samples must be >= 1, got {episodes} and {samples}")
    tasks = min(episodes, split_tasks)
    return tasks, samples * (1 if greedy else -(-episodes // tasks))


def evaluate_policy(env: EnvMaker, policy: Policy, settings: EvalSettings | None = None, *, policy_name: str,
                    pool: EnvPool | None = None, on_episode: Callable[[int, int], None] | None = None,
                    shard: tuple[int, int] = (0, 1),
                    gather: Callable[[RolloutResult], Sequence[RolloutResult]] | None = None
                    ) -> tuple[EvalRow, RolloutResult]:
    """Play the fixed evaluation set of `settings.split` (see `plan_split`) with `policy`; the one evaluation path.

    Training (`Trainer.evaluate`) and `envgym eval` both call this, so one
    checkpoint gets one number either way. Task k is reset with seed
    `group_seed(settings.seed, k)`; a token policy samples from torch's generator seeded
    with that seed (the caller's generator is left as it was). Without `pool`, one
    of `settings.num_envs` slots whose resets and steps time out after `settings.step_timeout`
    seconds is made and closed here. `env` comes made and `policy` loaded: the settings that make envs and
    load policies are `evaluate`'s and unused here.
    `shard=(i, n)` plays only the i-th of n contiguous blocks of the tasks (a
    data-parallel rank's share); `gather` then returns every shard's result in
    shard order (e.g. an all-gather across the ranks), and the row and result
    cover the whole set. Without `gather` they cover the shard. With `settings.agent` the episodes are that
    agent's, played through `envgym.agents` (`context`, `window` and `pool` do not apply).
    """
    settings = settings or EvalSettings()
    with env() as probe:
        split_tasks = probe.unwrapped.num_tasks[settings.split]
    tasks, per_task = plan_split(split_tasks, settings.episodes, settings.samples, settings.sampling.temperature == 0)
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    first, stop = tasks * index // count, tasks * (index + 1) // count
    with contextlib.ExitStack() as stack:
        if pool is None and settings.agent is None:
            size = settings.num_envs or default_num_envs(settings.backend, (stop - first) * per_task, env)
            pool = stack.enter_context(EnvPool(env, size, backend=settings.backend, step_timeout=settings.step_timeout))
        with _seeded_torch(settings.seed):
            collect = collect_groups if settings.agent is None else functools.partial(
                collect_agent_groups, agent=settings.agent, episode_timeout=settings.episode_timeout)
            result = collect(env, policy, n_groups=stop - first, group_size=per_task, split=settings.split,
                             seed=settings.seed, sampling=settings.sampling, context=settings.context,
                             window=settings.window, max_turns=settings.max_turns, pool=pool,
                             retries=settings.retries, tasks=list(range(first, stop)),
                             max_context_tokens=settings.max_context_tokens, on_episode=on_episode,
                             first_group=first)
    budget = context_budget(policy, settings.max_context_tokens)
    if gather is None:
        return summarize(env.env_id, policy_name, result, tasks=stop - first, samples=per_task,
                         context_budget=budget), result
    result = RolloutResult.merge(gather(result))
    return summarize(env.env_id, policy_name, result, tasks=tasks, samples=per_task, context_budget=budget), result


@contextlib.contextmanager
def _seeded_torch(seed: int):
    """Torch's generators seeded with `seed` inside, restored after (no-op where torch was never imported)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def evaluate(env_ids: str | Sequence[str], policy: str | Policy | Sequence[str | Policy],
             settings: EvalSettings | None = None, *, progress: bool = False) -> EvalReport:
    """Evaluate each policy on each env with `evaluate_policy` under `settings`; one row per pair.

    Every env is made by `EnvMaker(env_id, env_kwargs, extract_action,
    show_admissible)`. Policies are spec strings (see
    `envgym.policies.POLICY_SPECS`, loaded once with the settings' request and
    engine settings) or policy objects. Env ids and knobs, policy paths, the agent
    and which policies the engine and tool settings apply to are checked before any
    model loads. The report's settings are `settings.to_dict()` plus the time.
    """
    settings = settings or EvalSettings()
    env_ids = [env_ids] if isinstance(env_ids, str) else list(env_ids)
    policies = [policy] if isinstance(policy, str) or not isinstance(policy, Sequence) else list(policy)
    import envgym

    makers = []
    for env_id in env_ids:
        envgym.spec(env_id)  # an unknown id or knob fails before any model loads
        maker = EnvMaker(env_id, dict(settings.env_kwargs), settings.extract_action, settings.show_admissible)
        maker().close()
        makers.append(maker)
    for spec in policies:
        if isinstance(spec, str):
            check_policy_spec(spec)
    if isinstance(settings.agent, str):
        from envgym.agents import load_agent

        load_agent(settings.agent)  # a typo fails before any model loads
    if settings.engine_args:
        _require_policy_kind(policies, "vllm:DIR", f"engine settings {sorted(settings.engine_args)} apply",
                             "--engine-arg")
    if settings.send_tools:
        _require_policy_kind(policies, "openai:URL#MODEL", "sending tool schemas applies", "--send-tools")
    named = [(p, p) if isinstance(p, str) else (type(p).__name__, p) for p in policies]
    rows, rollouts = [], []
    with _progress_bar(progress) as bar:
        for name, spec in named:
            loaded = spec if not isinstance(spec, str) else load_policy(spec, **_policy_options(spec, settings))
            for maker in makers:
                task = bar.add_task(f"{maker.env_id} · {name}", total=None) if bar else None
                row, result = evaluate_policy(
                    maker, loaded, settings, policy_name=name,
                    on_episode=(lambda done, total, t=task: bar.update(t, completed=done, total=total))
                    if bar else None)
                rows.append(row)
                rollouts.append(result)
    return EvalReport(rows, settings.to_dict() | {"time": time.strftime("%Y-%m-%dT%H:%M:%S")}, rollouts)


def check_policy_spec(spec: str) -> None:
    """Fail with ValueError, before anything loads, if `spec` names a local checkpoint directory that is not there
    (an hf: spec may name any model `envgym.models.load_model` loads: a tiny model and a hub id too)."""
    from envgym.models import model_kind

    kind, _, target = spec.partition(":")
    known = model_kind(target) is not None if kind == "hf" else target == "default" or os.path.isdir(target)
    if kind in ("hf", "vllm") and target and not known:
        raise ValueError(f"policy {spec}: there is no directory {target!r}; expected a checkpoint written by "
                         "save_pretrained" + (", hf:default for the embedded SmolLM2, a tiny model (hf:tiny-maze) "
                                              "or a Hugging Face hub id (hf:org/name)" if kind == "hf" else ""))


def _require_policy_kind(policies: Sequence[Any], spec: str, what: str, option: str) -> None:
    """ValueError unless a policy spec of `spec`'s kind (e.g. "vllm:DIR") is among `policies`: `what`, set by
    `option`, applies to such policies only."""
    kind = spec.partition(":")[0] + ":"
    if not any(isinstance(p, str) and p.startswith(kind) for p in policies):
        raise ValueError(f"{what} to {kind} policies only; name one with --policy {spec}, or drop {option}")


def _policy_options(spec: str, settings: EvalSettings) -> dict[str, Any]:
    """What `load_policy` needs beyond the spec: an endpoint samples with the settings' sampling and takes the
    request settings given (None keeps its default), an engine takes the engine settings; other policies need
    nothing."""
    if spec.startswith("openai:"):
        given = {"sampling": settings.sampling, "timeout": settings.request_timeout,
                 "max_retries": settings.request_retries, "max_concurrency": settings.max_concurrency,
                 "tools": settings.send_tools}
        return {key: value for key, value in given.items() if value is not None}
    if spec.startswith("vllm:"):
        return dict(settings.engine_args)
    return {}


def failure_summary(report: EvalReport, most_common: int = 3) -> list[str]:
    """One line per row that dropped episodes (failed past their retries) or played none: counts and causes."""
    lines = []
    for row in report.rows:
        if not row.dropped_episodes and row.episodes:
            continue
        planned = row.episodes + row.dropped_episodes
        causes = Counter(_cause(failure["cause"]) for failure in row.failures).most_common(most_common)
        lines.append(f"{row.env_id} · {row.policy}: {row.dropped_episodes} of {planned} episodes dropped after "
                     f"failing past {report.settings.get('retries', '?')} retries (counted as losses); "
                     f"{len(row.failures)} failed attempts, causes: "
                     + ("; ".join(f"{n}x {cause}" for cause, n in causes) or "none recorded"))
    return lines


def _cause(cause: str, limit: int = 200) -> str:
    """The first line of a failure's cause, shortened."""
    cause = cause.strip().splitlines()[0] if cause.strip() else "(no cause given)"
    return cause if len(cause) <= limit else cause[:limit] + "..."


class _NoBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _progress_bar(enabled: bool):
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
