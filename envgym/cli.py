"""The `envgym` command: list, info, check, play, eval, view, diagnose, serve, and (where installed) train, sft.

Exit codes: 0 success, 1 a check or run failed (or a file, disk or network error
stopped it), 2 bad usage (unknown id, bad option or config value), 130 interrupted.
Expected errors print one line naming what is wrong; only a bug prints a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

import envgym
from envgym.core import RunFailed
from envgym.option_types import parse_key_value
from envgym.registration import spec as env_spec

if TYPE_CHECKING:
    from envgym.evaluation import EvalSettings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: Modules that add subcommands through `register_cli(subparsers)`; a missing one is skipped.
SUBCOMMAND_MODULES = ("envgym.trainers.cli",)

console = Console()


def parse_kwargs(pairs: Sequence[str]) -> dict[str, Any]:
    """`["size=7", "loops=0.2", "name=x"]` -> `{"size": 7, "loops": 0.2, "name": "x"}` (values read as YAML by
    `parse_key_value`, the config overrides' parser too)."""
    return dict(parse_key_value(pair) for pair in pairs)


def cmd_list(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from envgym.registration import source_of

    table = Table(title="registered envs")
    table.add_column("id", style="bold")
    table.add_column("max turns", justify="right")
    if args.source:
        table.add_column("source")
    table.add_column("description")
    for env_id in envgym.list_envs():
        s = env_spec(env_id)
        table.add_row(env_id, str(s.max_turns or "-"), *([source_of(env_id)] if args.source else []), s.description)
    for prefix, adapter in envgym.prefixes().items():  # whole families: PREFIX:NAME
        extra = f"; pip install 'envgym[{adapter.extra}]'" if adapter.extra else ""
        table.add_row(f"{prefix}:NAME", str(adapter.max_turns or "-"),
                      *([escape(f"adapter {prefix}: {adapter.source}{extra}")] if args.source else []),
                      f"{adapter.description} E.g. {adapter.example}")
    console.print(table)
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    s = env_spec(args.id)
    env = envgym.make(args.id, **parse_kwargs(args.kwargs))
    base = env.unwrapped
    console.print(f"[bold]{args.id}[/bold]  ({s.entry_point if isinstance(s.entry_point, str) else s.entry_point!r})")
    if s.description:
        console.print(s.description)
    console.print(f"\n[bold]max turns[/bold]: {s.max_turns or 'none'}")
    console.print("[bold]splits[/bold]: " + ", ".join(f"{k} ({v} tasks)" for k, v in base.num_tasks.items()))
    console.print(f"[bold]action format[/bold]: {base.action_format}")
    console.print(f"[bold]instructions[/bold]:\n{base.instructions}")
    if base.knobs:
        table = Table(title="difficulty knobs (pass as KEY=VALUE)")
        table.add_column("knob", style="bold")
        table.add_column("current")
        table.add_column("meaning")
        for knob, meaning in base.knobs.items():
            table.add_row(knob, repr(getattr(base, knob, "?")), meaning)
        console.print(table)
    env.close()
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    ids = envgym.list_envs() if args.all else args.ids
    if not ids:
        console.print("[red]name at least one env id, or pass --all[/red]")
        return EXIT_USAGE
    failed = 0
    for env_id in ids:
        env_spec(env_id)  # unknown ids fail before any work
        report = envgym.check_env(env_id, **parse_kwargs(args.kwargs))
        style = "green" if report.ok else "red"
        console.print(f"[{style}]{report.render()}[/{style}]", highlight=False)
        failed += not report.ok
        if args.diagnose:  # warnings only: a finding does not fail the check
            from envgym.diagnose import diagnose

            diagnosis = diagnose(env_id, env_kwargs=parse_kwargs(args.kwargs), groups=args.groups,
                                 group_size=args.group_size, probe_tasks=args.probe_tasks, max_turns=args.max_turns)
            console.print(diagnosis.render(), style="yellow" if diagnosis.warnings else None, highlight=False,
                          markup=False)
    return EXIT_FAILED if failed else EXIT_OK


def cmd_play(args: argparse.Namespace) -> int:
    env = envgym.make(args.id, **parse_kwargs(args.kwargs))
    options = {"split": args.split, **({"task": args.task} if args.task is not None else {})}
    obs, info = env.reset(seed=args.seed, options=options)
    console.print(f"[bold]{args.id}[/bold] (split {args.split}, task {env.unwrapped.task}); "
                  f"type an action, or :quit\n[dim]{env.unwrapped.instructions}[/dim]\n")
    turn, total = 0, 0.0
    while True:
        console.print(obs, highlight=False, markup=False)
        if info.get("admissible_actions"):
            console.print(f"[dim]admissible: {', '.join(info['admissible_actions'])}[/dim]")
        try:
            action = input(f"[turn {turn + 1}] > ")
        except EOFError:
            action = ":quit"
        if action.strip() == ":quit":
            console.print(f"quit after {turn} turns, return {total:g}")
            env.close()
            return EXIT_OK
        obs, reward, terminated, truncated, info = env.step(action)
        turn, total = turn + 1, total + float(reward)
        flag = " [yellow](invalid action)[/yellow]" if info.get("invalid_action") else ""
        console.print(f"[dim]reward {reward:+g} (return {total:g}), turn {turn}[/dim]{flag}")
        if terminated or truncated:
            console.print(obs, highlight=False, markup=False)
            outcome = "won" if info.get("won") else ("truncated" if truncated else "ended")
            console.print(f"[bold]episode {outcome}[/bold] after {turn} turns, return {total:g}")
            env.close()
            return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    """`envgym eval`: print the Markdown table; write report.json/.md/.png under --out."""
    from envgym.evaluation import evaluate, failure_summary

    out = _writable_directory(args.out) if args.out else None  # before the evaluation, not after it
    env_ids, settings = eval_settings(args)
    report = evaluate(env_ids, args.policy, settings, progress=True)
    print(report.to_markdown(), end="")  # plain print: a console would wrap the table's rows
    if out is not None:
        paths = report.save(out)
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
    problems = failure_summary(report)  # a crashed env or a dead endpoint must not read as a 0% policy
    for line in problems:
        console.print(line, style="red", markup=False, highlight=False, soft_wrap=True)
    return EXIT_FAILED if problems else EXIT_OK


def eval_settings(args: argparse.Namespace) -> tuple[list[str], EvalSettings]:
    """The env ids and the settings of `envgym eval`: `EvalSettings`' defaults, then those of the training config
    of --config (`TrainConfig.eval_settings`, so a checkpoint is evaluated exactly as its run evaluated it),
    then the options given on the command line (an option's flag is its setting's name)."""
    from envgym.evaluation import EvalSettings

    settings, env_ids = EvalSettings(), list(args.env)
    if args.config:
        from envgym.trainers.config import load_config

        config = load_config(args.config)
        settings, env_ids = config.eval_settings(), env_ids or [config.env.id]
    if not env_ids:
        raise ValueError("name an env with --env ID, or give a training config with --config RUN.yaml")
    given = {f.name: value for f in dataclasses.fields(settings) if (value := getattr(args, f.name, None)) is not None}
    sampling = {name: value for name in ("temperature", "top_p", "max_new_tokens")
                if (value := getattr(args, name)) is not None}
    return env_ids, dataclasses.replace(
        settings, **given, env_kwargs=settings.env_kwargs | parse_kwargs(args.env_kwarg),
        engine_args=settings.engine_args | parse_kwargs(args.engine_arg),
        sampling=dataclasses.replace(settings.sampling, **sampling))


def _writable_directory(path: str) -> Path:
    """`path`, created if needed, after proving a file can be written there; ValueError naming --out if not."""
    import tempfile

    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise ValueError(f"--out {path}: cannot write there ({exc.strerror or exc})") from None
    return out


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """The `eval` subcommand: each option that is a setting defaults to None, meaning "not given" (`eval_settings`)."""
    from envgym.evaluation import EvalSettings
    from envgym.option_types import option_range
    from envgym.policies import POLICY_SPECS

    default = EvalSettings()

    def checked(name: str, kind: type) -> Any:  # an argparse type: `kind`, within the range EvalSettings accepts
        return option_range(EvalSettings, name).parser(kind)

    p = sub.add_parser("eval", help="evaluate policies on envs: success with 95%% CI, return, pass@k, ...",
                       description="Evaluate policies on envs with the rollout code training uses: success rate with a "
                                   "95% Wilson interval, mean return and turns, pass@k, invalid-action and cut-off "
                                   "rates, prompt and generated tokens and context-ended episodes, per env and "
                                   "policy. Every evaluation plays the first tasks of "
                                   "the split with fixed seeds. Exits 1 when an episode failed past its retries "
                                   "or none was played.")
    p.add_argument("--env", action="append", default=[], metavar="ID", help="env id (repeatable)")
    p.add_argument("--policy", action="append", required=True, metavar="SPEC",
                   help=f"policy (repeatable): {' | '.join(POLICY_SPECS)}")
    p.add_argument("--config", default=None, metavar="RUN.yaml",
                   help="take the env, its wrappers and the evaluation settings from a training config "
                        "(a recipe, or a checkpoint's config.yaml); options given here override it")
    p.add_argument("--env-kwarg", action="append", default=[], metavar="KEY=VALUE",
                   help="a knob of every env, e.g. size=4 (repeatable; see `envgym info ID`)")
    p.add_argument("--extract-action", default=None, choices=["none", "tag", "admissible"],
                   help="find the action in chatty replies (the ActionExtraction wrapper; "
                        f"default {default.extract_action})")
    p.add_argument("--show-admissible", default=None, action=argparse.BooleanOptionalAction,
                   help="append the valid actions to each observation (default: no)")
    p.add_argument("--split", default=None, choices=["train", "test"], help=f"default {default.split}")
    p.add_argument("--episodes", type=checked("episodes", int), default=None,
                   help=f"episodes per env (default {default.episodes}): the first tasks of the split, each played "
                        "several times when the split is smaller and the policy samples")
    p.add_argument("--samples", type=checked("samples", int), default=None,
                   help=f"episodes per task, for pass@k (default {default.samples})")
    p.add_argument("--seed", type=int, default=None, help=f"default {default.seed}, as in training")
    p.add_argument("--max-turns", type=checked("max_turns", int), default=None,
                   help="cap on turns per episode (default: the env's)")
    p.add_argument("--context", default=None, choices=["full", "window"],
                   help="what each prompt holds, for every policy: the whole episode (full, the default) or the "
                        "instructions and the last --window turns (window)")
    p.add_argument("--window", type=checked("window", int), default=None,
                   help=f"turns kept with --context window (default {default.window})")
    p.add_argument("--max-context-tokens", type=checked("max_context_tokens", int), default=None, metavar="N",
                   help="context budget of every policy: an episode whose prompt plus reply pass N tokens ends "
                        "there, counted as context-ended (default: the model's or endpoint's own window, where it "
                        "reports one)")
    p.add_argument("--temperature", type=float, default=None,
                   help=f"default {default.sampling.temperature} (0: greedy)")
    p.add_argument("--top-p", type=float, default=None, help=f"default {default.sampling.top_p}")
    p.add_argument("--max-new-tokens", type=int, default=None, help=f"default {default.sampling.max_new_tokens}")
    p.add_argument("--backend", default=None, choices=["auto", "sync", "process", "ray"],
                   help="EnvPool backend (default auto: worker processes for envs with slow steps)")
    p.add_argument("--num-envs", type=checked("num_envs", int), default=None, metavar="N",
                   help="EnvPool slots (default: one per episode with sync, else 4 worker processes per core)")
    p.add_argument("--step-timeout", type=checked("step_timeout", float), default=None, metavar="SECONDS",
                   help=f"a reset or step taking longer fails its episode (default {default.step_timeout:g})")
    p.add_argument("--retries", type=checked("retries", int), default=None,
                   help=f"attempts after a failed episode before its group is dropped (default {default.retries})")
    p.add_argument("--request-timeout", type=checked("request_timeout", float), default=None, metavar="SECONDS",
                   help="timeout of each HTTP request of openai: policies (default: the policy's, 60)")
    p.add_argument("--request-retries", type=checked("request_retries", int), default=None, metavar="N",
                   help="retries of an HTTP request of openai: policies after a rate limit (429), a server error "
                        "(5xx), a timeout or a refused connection, with exponential backoff (default 3)")
    p.add_argument("--max-concurrency", type=checked("max_concurrency", int), default=None, metavar="N",
                   help="HTTP requests of an openai: policy in flight at once (default 8)")
    p.add_argument("--send-tools", action="store_true", default=None,
                   help="send a tool env's tool schemas with each request of openai: policies, read the "
                        "endpoint's tool calls back as <tool_call> text and send earlier calls back as tool_calls "
                        "answered by tool messages (the server must accept tools; vLLM: "
                        "--enable-auto-tool-choice --tool-call-parser NAME); default: calls travel as text only")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the vllm: policies' engine, a keyword of vllm.LLM, e.g. max_model_len=2048 "
                        "(repeatable; CPU defaults: see docs/vllm.md)")
    p.add_argument("--agent", default=None, metavar="MODULE:FUNCTION",
                   help="play every episode with this agent program, agent(env, client), through an "
                        "OpenAI-compatible gateway in front of each policy (default: the built-in loop; "
                        "see docs/gateway.md)")
    p.add_argument("--episode-timeout", type=float, default=None, metavar="SECONDS",
                   help="with --agent: an agent that has not returned by then fails its episode (default: none)")
    p.add_argument("--out", default=None, metavar="DIR", help="write report.json, report.md and report.png here")
    p.set_defaults(func=cmd_eval)


def cmd_view(args: argparse.Namespace) -> int:
    """`envgym view`: write the page; with --open, open it in a browser where one exists."""
    import time

    from envgym.viewer import write_view

    started = time.perf_counter()
    target = write_view(args.path, args.out)
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - started:.1f} s)")
    if args.open:
        import webbrowser

        try:
            opened = webbrowser.get().open(target.resolve().as_uri())
        except webbrowser.Error:
            opened = False
        if not opened:
            print(f"no browser found here; open {target.resolve().as_uri()} on a machine with one")
    return EXIT_OK


def add_view_parser(sub: argparse._SubParsersAction) -> None:
    from envgym.viewer import PAGE_FILE

    text = "write one self-contained HTML page showing a training run or an evaluation report"
    p = sub.add_parser("view", help=text, description=text + " (no server, no network; it opens from disk)")
    p.add_argument("path", metavar="PATH", help="a training run's out_dir or the --out directory of `envgym eval`")
    p.add_argument("--out", default=None, metavar="FILE", help=f"where to write the page (default PATH/{PAGE_FILE})")
    p.add_argument("--open", action="store_true", help="open the page in a browser where one exists")
    p.set_defaults(func=cmd_view)


def cmd_diagnose(args: argparse.Namespace) -> int:
    """`envgym diagnose`: print the report; exit 0 (findings are warnings, not failures)."""
    from envgym.diagnose import diagnose

    print(diagnose(args.id, env_kwargs=parse_kwargs(args.kwargs), groups=args.groups, group_size=args.group_size,
                   probe_tasks=args.probe_tasks, seed=args.seed, max_turns=args.max_turns, branch_k=args.branch_k,
                   branch_policy=args.branch_policy).render())
    return EXIT_OK


def _add_diagnose_options(p: argparse.ArgumentParser) -> None:
    """The options `envgym diagnose` and `envgym check --diagnose` share."""
    p.add_argument("--groups", type=int, default=8, help="groups per scripted policy (default 8)")
    p.add_argument("--group-size", type=int, default=8, help="episodes per group, G (default 8)")
    p.add_argument("--probe-tasks", type=int, default=3, help="train tasks the probes play (default 3)")
    p.add_argument("--max-turns", type=int, default=None, help="cap on turns per episode (default: the env's)")
    p.add_argument("--branch-k", type=int, default=8, help="branching probe: continuations from every turn (0: off)")
    p.add_argument("--branch-policy", choices=("mix", "random"), default="mix",
                   help="branching probe: who plays (mix: the oracle half the time; default mix)")


def add_diagnose_parser(sub: argparse._SubParsersAction) -> None:
    text = "play scripted policies on an env: anchor hit rate, reward range, turns to win, reward-hacking probes"
    p = sub.add_parser("diagnose", help=text, description=text)
    p.add_argument("id", help="env id, e.g. games/Maze-v0")
    p.add_argument("kwargs", nargs="*", metavar="KEY=VALUE", help="constructor overrides, e.g. size=7")
    p.add_argument("--seed", type=int, default=0)
    _add_diagnose_options(p)
    p.set_defaults(func=cmd_diagnose)


def cmd_serve(args: argparse.Namespace) -> int:
    """`envgym serve`: serve the env over OpenEnv until interrupted."""
    try:
        from envgym.openenv_server import serve
    except ImportError as exc:
        raise RunFailed(f"serving needs openenv-core ({exc.name} is missing): pip install 'envgym[openenv]'") from None
    env_spec(args.id)  # an unknown id fails before the server's imports and its first env
    serve(args.id, parse_kwargs(args.kwargs), host=args.host, port=args.port, max_sessions=args.max_sessions,
          idle_timeout=args.idle_timeout or None)
    return EXIT_OK


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    text = "serve an env as an OpenEnv server (WebSocket /ws): one env per session; train on it elsewhere " \
           "with env id openenv:http://HOST:PORT"
    p = sub.add_parser("serve", help=text, description=text)
    p.add_argument("id", help="env id, e.g. games/Maze-v0")
    p.add_argument("kwargs", nargs="*", metavar="KEY=VALUE", help="constructor overrides, e.g. size=7")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8000, help="default 8000; 0 picks a free port (printed)")
    p.add_argument("--max-sessions", type=int, default=16, metavar="N", help="concurrent sessions (default 16)")
    p.add_argument("--idle-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="close a session idle this long (default 600; 0: never)")
    p.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="envgym", description="Multi-turn text and tool environments for LLM agents, with turn-level RL.")
    parser.add_argument("--version", action="version", version=f"envgym {envgym.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list registered env ids and adapter prefixes")
    p.add_argument("--source", action="store_true",
                   help="say where each id comes from: built-in, a plugin (entry point), or an adapter prefix")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="describe an env: instructions, action format, splits, difficulty knobs")
    p.add_argument("id", help="env id, e.g. games/Maze-v0")
    p.add_argument("kwargs", nargs="*", metavar="KEY=VALUE", help="constructor overrides, e.g. size=7")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("check", help="run the env checker; exit 1 if any check fails")
    p.add_argument("ids", nargs="*", metavar="ID", help="env ids to check")
    p.add_argument("--all", action="store_true", help="check every registered env")
    p.add_argument("--kwargs", nargs="*", default=[], metavar="KEY=VALUE", help="constructor overrides")
    p.add_argument("--diagnose", action="store_true",
                   help="also run `envgym diagnose` (anchor hit rate, reward range, reward-hacking probes)")
    _add_diagnose_options(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("play", help="play an env in the terminal")
    p.add_argument("id", help="env id, e.g. games/GuessNumber-v0")
    p.add_argument("kwargs", nargs="*", metavar="KEY=VALUE", help="constructor overrides")
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--task", type=int, default=None, help="task index within the split (default: drawn from seed)")
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_play)

    add_eval_parser(sub)
    add_view_parser(sub)
    add_diagnose_parser(sub)
    add_serve_parser(sub)
    for module_name in SUBCOMMAND_MODULES:
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).register_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # under torchrun every rank prints its own errors: say which one
    where = f" (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    try:
        return args.func(args)
    except (KeyError, ValueError, TypeError) as exc:
        return _error(args.command + where, exc.args[0] if isinstance(exc, KeyError) and exc.args else exc,
                      EXIT_USAGE)
    except (FloatingPointError, RunFailed, OSError) as exc:  # a run stopped (a NaN, no groups left), disk, file, net
        return _error(args.command + where, exc, EXIT_FAILED)
    except KeyboardInterrupt:
        return _error(args.command + where, "interrupted", EXIT_INTERRUPTED)


def _error(command: str, message: object, code: int) -> int:
    """Print `envgym COMMAND: MESSAGE` on one line (never wrapped, never read as markup); return `code`."""
    console.print(f"envgym {command}: {message}", style="red", markup=False, highlight=False, soft_wrap=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
