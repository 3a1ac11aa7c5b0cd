"""The `envgym` command: list, info, check, play, and (where installed) eval, train, sft.

Exit codes: 0 success, 1 a check or run failed, 2 bad usage (unknown id, bad option).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

import envgym
from envgym.policies.vllm import WeightSyncError
from envgym.registration import spec as env_spec

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: Modules that add subcommands through `register_cli(subparsers)`; a missing one is skipped.
SUBCOMMAND_MODULES = ("envgym.evaluation", "envgym.trainers.cli")

console = Console()


def parse_kwargs(pairs: Sequence[str]) -> dict[str, Any]:
    """`["size=7", "loops=0.2", "name=x"]` -> `{"size": 7, "loops": 0.2, "name": "x"}` (values parsed as YAML scalars)."""
    import yaml

    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        kwargs[key] = yaml.safe_load(value)
    return kwargs


def cmd_list(args: argparse.Namespace) -> int:
    table = Table(title="registered envs")
    table.add_column("id", style="bold")
    table.add_column("max turns", justify="right")
    table.add_column("description")
    for env_id in envgym.list_envs():
        s = env_spec(env_id)
        table.add_row(env_id, str(s.max_turns or "-"), s.description)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="envgym", description="Multi-turn text and tool environments for LLM agents, with turn-level RL.")
    parser.add_argument("--version", action="version", version=f"envgym {envgym.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list registered env ids")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="describe an env: instructions, action format, splits, difficulty knobs")
    p.add_argument("id", help="env id, e.g. games/Maze-v0")
    p.add_argument("kwargs", nargs="*", metavar="KEY=VALUE", help="constructor overrides, e.g. size=7")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("check", help="run the env checker; exit 1 if any check fails")
    p.add_argument("ids", nargs="*", metavar="ID", help="env ids to check")
    p.add_argument("--all", action="store_true", help="check every registered env")
    p.add_argument("--kwargs", nargs="*", default=[], metavar="KEY=VALUE", help="constructor overrides")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("play", help="play an env in the terminal")
    p.add_argument("id", help="env id, e.g. games/GuessNumber-v0")
    p.add_argument("kwargs", nargs="*", metavar="KEY=VALUE", help="constructor overrides")
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--task", type=int, default=None, help="task index within the split (default: drawn from seed)")
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_play)

    for module_name in SUBCOMMAND_MODULES:
        if importlib.util.find_spec(module_name) is not None:
            importlib.import_module(module_name).register_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, TypeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        console.print(f"[red]envgym {args.command}: {message}[/red]", highlight=False)
        return EXIT_USAGE
    except (FloatingPointError, WeightSyncError) as exc:  # a training run stopped on a NaN or on stale rollout weights
        console.print(f"[red]envgym {args.command}: {exc}[/red]", highlight=False)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
