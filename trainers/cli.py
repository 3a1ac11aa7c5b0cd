"""The `envgym train` and `envgym sft` subcommands (added to envgym's CLI by `register_cli`).

    envgym train trainers/recipes/quickstart.yaml                  # RL (with the recipe's warm start)
    envgym train RECIPE.yaml optim.lr=1e-4 rollout.group_size=4   # overrides, checked like the YAML
    envgym train RECIPE.yaml --resume                              # continue from the newest intact checkpoint
    envgym train RECIPE.yaml --overwrite                           # delete the run in out_dir, start over
    envgym sft RECIPE.yaml sft.steps=300                           # only the supervised warm start
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from rich.console import Console

console = Console()


def _summary(history: list[dict]) -> str:
    """'initial 0.02 -> after SFT 0.10 -> final 0.45' from a run's evaluations."""
    parts = []
    for phase, label in (("init", "initial"), ("sft", "after SFT")):
        scores = [m["eval/success"] for m in history if m.get("phase") == phase and "eval/success" in m]
        if scores:
            parts.append(f"{label} {scores[-1]:.3f}")
    final = [m["eval/success"] for m in history if m.get("phase") == "rl" and "eval/success" in m]
    if final:
        parts.append(f"final {final[-1]:.3f}")
    return " -> ".join(parts)


def cmd_train(args: argparse.Namespace) -> int:
    from envgym.trainers import Trainer, load_config

    config = load_config(args.config, args.overrides)
    with Trainer(config, resume=args.resume, overwrite=args.overwrite) as trainer:
        history = trainer.fit()
    if not trainer.dp.is_main:  # under torchrun, rank 0 reports for all ranks
        return 0
    console.print(f"held-out success ({config.eval.split} split): {_summary(history)}")
    console.print(f"metrics: {config.out_dir}/metrics.jsonl, curve: {config.out_dir}/learning_curve.png, "
                  f"TensorBoard: tensorboard --logdir {config.out_dir}/tensorboard")
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from envgym.trainers import ConfigError, Trainer, load_config

    config = load_config(args.config, args.overrides)
    if config.sft.steps < 1:
        raise ConfigError("sft.steps is 0; pass e.g. sft.steps=200 to run a supervised warm start")
    target = os.path.join(config.out_dir, "sft")
    # the warm start owns OUT/sft, not OUT: it may run before, after or next to a training run in OUT
    with Trainer(dataclasses.replace(config, out_dir=target)) as trainer:
        before = trainer.evaluate()
        stats = trainer.warm_start()
        after = trainer.evaluate()
        if trainer.dp.is_main:  # under torchrun every rank ran the same warm start; rank 0 saves it
            trainer.model.save_pretrained(target)
            trainer.tokenizer.save_pretrained(target)
    if not trainer.dp.is_main:
        return 0
    console.print(f"SFT: {stats['sft/steps']:.0f} steps, final loss {stats['sft/loss']:.3f}; held-out success "
                  f"{before['eval/success']:.3f} -> {after['eval/success']:.3f}")
    console.print(f"saved to {target}; start RL from it with model.init_from={target}")
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add `train` and `sft` to envgym's CLI."""
    for name, func, text in (("train", cmd_train, "train a policy with turn-level RL from a YAML recipe"),
                             ("sft", cmd_sft, "supervised warm start on the env's oracle demonstrations")):
        p = subparsers.add_parser(name, help=text, description=text)
        p.add_argument("config", help="a YAML recipe, e.g. trainers/recipes/quickstart.yaml")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=1e-4")
        if name == "train":
            start = p.add_mutually_exclusive_group()
            start.add_argument("--resume", action="store_true",
                               help="continue the run in out_dir from its newest intact checkpoint")
            start.add_argument("--overwrite", action="store_true",
                               help="delete the run in out_dir (checkpoints, metrics, TensorBoard) and start over")
        p.set_defaults(func=func)
