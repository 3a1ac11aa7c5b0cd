"""Evaluate policies on envs with the training rollout code (`collect_groups`), and the `envgym eval` command.

Per env and policy it reports the success rate with a 95% Wilson interval,
mean return, mean turns, pass@k (the unbiased estimator of Chen et al. 2021
over the `samples` episodes played per task), the invalid-action rate and the
tokens generated; `EvalReport.save(dir)` writes report.json, report.md and
report.png.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from envgym.chat import ContextMode
from envgym.policies import POLICY_SPECS, Policy, SamplingParams, load_policy
from envgym.pool import Backend
from envgym.rollout import RolloutResult, collect_groups


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
    """The results of one policy on one env."""

    env_id: str
    policy: str
    tasks: int
    episodes: int
    success_rate: float
    success_ci95: tuple[float, float]
    mean_return: float
    mean_turns: float
    pass_at_k: dict[int, float]
    invalid_action_rate: float
    generated_tokens: int
    dropped_groups: int
    retries: int
    wall_time: float


@dataclass
class EvalReport:
    """All rows of one evaluation and the settings that produced them."""

    rows: list[EvalRow]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"settings": self.settings, "results": [asdict(r) for r in self.rows]}, indent=2)

    def to_markdown(self) -> str:
        ks = sorted({k for r in self.rows for k in r.pass_at_k})
        head = ["env", "policy", "episodes", "success (95% CI)", "mean return", "mean turns",
                *[f"pass@{k}" for k in ks], "invalid actions", "tokens", "dropped groups"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            lo, hi = r.success_ci95
            cells = [r.env_id, r.policy, str(r.episodes), f"{r.success_rate:.1%} ({lo:.1%}-{hi:.1%})",
                     f"{r.mean_return:.3f}", f"{r.mean_turns:.1f}",
                     *[f"{r.pass_at_k[k]:.1%}" if k in r.pass_at_k else "" for k in ks],
                     f"{r.invalid_action_rate:.1%}", str(r.generated_tokens), str(r.dropped_groups)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        """A bar chart of success rates with their 95% intervals, grouped by env (PNG, Agg backend)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        envs = list(dict.fromkeys(r.env_id for r in self.rows))
        policies = list(dict.fromkeys(r.policy for r in self.rows))
        width = 0.8 / max(1, len(policies))
        fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(envs) * max(1, len(policies)) ** 0.5), 3.5))
        for j, name in enumerate(policies):
            rows = {r.env_id: r for r in self.rows if r.policy == name}
            xs = [i + (j - (len(policies) - 1) / 2) * width for i, env in enumerate(envs) if env in rows]
            rates = [rows[env].success_rate for env in envs if env in rows]
            errors = [[rows[env].success_rate - rows[env].success_ci95[0] for env in envs if env in rows],
                      [rows[env].success_ci95[1] - rows[env].success_rate for env in envs if env in rows]]
            ax.bar(xs, rates, width, yerr=errors, capsize=3, label=name)
        ax.set_xticks(range(len(envs)), envs)
        ax.set_ylim(0, 1)
        ax.set_ylabel("success rate (95% CI)")
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write report.json, report.md and report.png into `out_dir`; returns their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(self.to_json(), encoding="utf-8")
        (out / "report.md").write_text(self.to_markdown(), encoding="utf-8")
        return {"json": out / "report.json", "markdown": out / "report.md", "chart": self.plot(out / "report.png")}


def summarize(env_id: str, policy_name: str, result: RolloutResult, samples: int) -> EvalRow:
    """One report row from the groups of a rollout (dropped groups count in `dropped_groups` only)."""
    episodes = [e for g in result.groups for e in g.episodes]
    wins = sum(e.won for e in episodes)
    turns = sum(len(e.turns) for e in episodes)
    invalid = sum(t.invalid_action for e in episodes for t in e.turns)
    ks = sorted({1, samples})
    pass_k = {k: sum(pass_at_k(len(g.episodes), sum(e.won for e in g.episodes), k) for g in result.groups)
              / len(result.groups) for k in ks} if result.groups else {}
    n = len(episodes)
    return EvalRow(
        env_id=env_id, policy=policy_name, tasks=len(result.groups), episodes=n,
        success_rate=wins / n if n else 0.0, success_ci95=wilson_interval(wins, n),
        mean_return=sum(e.total_return for e in episodes) / n if n else 0.0,
        mean_turns=turns / n if n else 0.0, pass_at_k=pass_k,
        invalid_action_rate=invalid / turns if turns else 0.0,
        generated_tokens=sum(e.num_generated_tokens for e in episodes),
        dropped_groups=int(result.metrics["dropped_groups"]), retries=int(result.metrics["retries"]),
        wall_time=result.metrics["wall_time"])


def evaluate(
    env_ids: str | Sequence[str],
    policy: str | Policy | Sequence[str | Policy],
    *,
    env_kwargs: Mapping[str, Any] | None = None,
    split: str = "test",
    episodes: int = 16,
    samples: int = 1,
    seed: int = 0,
    sampling: SamplingParams | None = None,
    context: ContextMode = "full",
    window: int = 4,
    max_turns: int | None = None,
    backend: Backend = "sync",
    num_envs: int | None = None,
    engine_args: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> EvalReport:
    """Play `episodes` tasks of `split` per env, `samples` times each, with each policy; one row per pair.

    Every env is made with `env_kwargs` (its knobs, e.g. ``{"size": 4}``).
    Policies are spec strings (see `envgym.policies.POLICY_SPECS`, loaded once)
    or policy objects. Token policies sample with `sampling` (default:
    temperature 1, 64 new tokens). `engine_args` are settings of the engine of
    every `vllm:` policy (keyword arguments of `vllm.LLM`, e.g. ``{"max_model_len": 2048}``).
    """
    env_ids = [env_ids] if isinstance(env_ids, str) else list(env_ids)
    policies = [policy] if isinstance(policy, str) or not isinstance(policy, Sequence) else list(policy)
    if episodes < 1 or samples < 1:
        raise ValueError(f"episodes and samples must be >= 1, got {episodes} and {samples}")
    import envgym

    env_kwargs = dict(env_kwargs or {})
    engine_args = dict(engine_args or {})
    if engine_args and not any(isinstance(p, str) and p.startswith("vllm:") for p in policies):
        raise ValueError(f"engine settings {sorted(engine_args)} apply to vllm: policies only; "
                         "name one with --policy vllm:DIR, or drop --engine-arg")
    for env_id in env_ids:
        envgym.spec(env_id)  # an unknown id or knob fails before any model loads
        if env_kwargs:
            envgym.make(env_id, **env_kwargs).close()
    named = [(p, p) if isinstance(p, str) else (type(p).__name__, p) for p in policies]
    rows = []
    with _progress_bar(progress) as bar:
        for name, spec in named:
            loaded = spec if not isinstance(spec, str) else load_policy(spec, **_policy_options(spec, sampling,
                                                                                             engine_args))
            for env_id in env_ids:
                task = bar.add_task(f"{env_id} · {name}", total=episodes * samples) if bar else None
                env = functools.partial(envgym.make, env_id, **env_kwargs) if env_kwargs else env_id
                result = collect_groups(
                    env, loaded, n_groups=episodes, group_size=samples, split=split, seed=seed, sampling=sampling,
                    context=context, window=window, max_turns=max_turns, backend=backend, num_envs=num_envs,
                    on_episode=(lambda done, total, t=task: bar.update(t, completed=done)) if bar else None)
                rows.append(summarize(env_id, name, result, samples))
    settings = {"env_kwargs": env_kwargs, "split": split, "episodes": episodes, "samples": samples, "seed": seed,
                "context": context, "window": window, "max_turns": max_turns,
                "sampling": asdict(sampling or SamplingParams()), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return EvalReport(rows, settings)


def _policy_options(spec: str, sampling: SamplingParams | None, engine_args: dict[str, Any]) -> dict[str, Any]:
    """What `load_policy` needs beyond the spec: an endpoint samples with the same settings, an engine has its own."""
    if spec.startswith("openai:") and sampling:
        return {"sampling": sampling}
    if spec.startswith("vllm:"):
        return engine_args
    return {}


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


def cmd_eval(args: argparse.Namespace) -> int:
    """`envgym eval`: print the Markdown table; write report.json/.md/.png under --out."""
    from envgym.cli import parse_kwargs  # here: envgym.cli imports this module to register the subcommand

    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens)
    report = evaluate(args.env, args.policy, env_kwargs=parse_kwargs(args.env_kwarg), split=args.split,
                      episodes=args.episodes, samples=args.samples, seed=args.seed, sampling=sampling,
                      context=args.context, window=args.window, max_turns=args.max_turns, backend=args.backend,
                      engine_args=parse_kwargs(args.engine_arg), progress=True)
    print(report.to_markdown(), end="")  # plain print: a console would wrap the table's rows
    if args.out:
        paths = report.save(args.out)
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` subcommand to envgym's CLI."""
    p = subparsers.add_parser("eval", help="evaluate policies on envs: success with 95%% CI, return, pass@k, ...",
                              description="Evaluate policies on envs with the rollout code training uses: success "
                                          "rate with a 95% Wilson interval, mean return and turns, pass@k, "
                                          "invalid-action rate and tokens generated, per env and policy.")
    p.add_argument("--env", action="append", required=True, metavar="ID", help="env id (repeatable)")
    p.add_argument("--policy", action="append", required=True, metavar="SPEC",
                   help=f"policy (repeatable): {' | '.join(POLICY_SPECS)}")
    p.add_argument("--env-kwarg", action="append", default=[], metavar="KEY=VALUE",
                   help="a knob of every env, e.g. size=4 (repeatable; see `envgym info ID`)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--episodes", type=int, default=16, help="tasks per env (default 16)")
    p.add_argument("--samples", type=int, default=1, help="episodes per task, for pass@k (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-turns", type=int, default=None, help="cap on turns per episode (default: the env's)")
    p.add_argument("--context", default="full", choices=["full", "window"], help="chat context of token policies")
    p.add_argument("--window", type=int, default=4, help="turns kept with --context window (default 4)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--backend", default="sync", choices=["sync", "process", "ray"], help="EnvPool backend")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the vllm: policies' engine, a keyword of vllm.LLM, e.g. max_model_len=2048 "
                        "(repeatable; CPU defaults: see README)")
    p.add_argument("--out", default=None, metavar="DIR", help="write report.json, report.md and report.png here")
    p.set_defaults(func=cmd_eval)
