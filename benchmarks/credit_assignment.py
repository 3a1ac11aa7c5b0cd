"""Credit assignment head to head: estimators trained with identical seeds and budgets, held-out success by iteration.

    python benchmarks/credit_assignment.py                         # maze: GRPO vs GiGPO vs PRIME, 3 seeds
    python benchmarks/credit_assignment.py --suite questions       # twenty questions: GRPO vs GiGPO vs IGPO
    python benchmarks/credit_assignment.py --suite prime-sweep --seeds 0   # PRIME's prm_lr x prm_beta x prm_update
    python benchmarks/credit_assignment.py --suite guess           # GuessNumber: GRPO vs IGPO
    python benchmarks/credit_assignment.py --suite branching-maze --seeds 0 1 2 3 4        # VinePPO, SPO-tree vs ...
    python benchmarks/credit_assignment.py --suite branching-questions --seeds 0 1 2 3 4   # ... GRPO, GiGPO, IGPO
    python benchmarks/credit_assignment.py --iterations 20 --seeds 0 1 2 3 --jobs 1
    python benchmarks/credit_assignment.py --suite prime-sweep --seeds 0 --report-only   # tables of finished runs

Every run starts from the quickstart recipe (tiny model, oracle warm start) with
the suite's env, then changes only the estimator (and the turn-reward model it
needs). Runs are single-threaded, `--jobs` at a time (default 2, one per core
here); each prints its curve. The tables at the end give mean and spread
(min-max) over seeds of held-out success at every evaluated iteration, then of
the suite's diagnostic metrics (averaged over each stretch of iterations between
evaluations), the wall time of a run, and `summary.json` under `--out` keeps every number.

The branching suites (`branching-maze`, `branching-questions`) run the branching
estimators (`rollout.branch`: K continuations from forked states) twice: "@tokens"
with fewer sampled episodes per iteration, so that the generated tokens per
iteration, branch tokens counted, come close to the baselines' (the table of
`rollout/generated_tokens` shows how close), and "@episodes" with the baselines'
sampled episodes plus their branches. IGPO needs a gold answer, which the maze has
not, so it runs in the questions suite only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

GRPO = ["algorithm.estimator=grpo", "algorithm.options={}"]
# advantages divided by the batch std, as GRPO and GiGPO normalise theirs: unscaled (std ~0.1 here) the recipe's
# entropy bonus outweighed them (a first run: entropy 2.0 -> 3.7 and 98% invalid replies by iteration 4)
VINEPPO = ["algorithm.estimator=vineppo", "algorithm.options={scale: batch_rms}"]
SPO_TREE = ["algorithm.estimator=spo_tree", "algorithm.options={scale: batch_rms}"]
GIGPO = ["algorithm.estimator=gigpo"]  # the quickstart's options: gamma 0.95, mean_std_norm, invalid penalty 0.1
IGPO = ["algorithm.estimator=igpo", "algorithm.options={}", "turn_reward.kind=info_gain"]  # prob_diff, joint
# the gain in log-probabilities (the default until 2026-12-07: the guess and branching-questions figures used it)
IGPO_LOG = [*IGPO, "turn_reward.info_gain=log_prob_diff"]


def prime(lr: float, beta: float, update: str) -> list[str]:
    """PRIME's overrides (paper leave-one-out, gamma 1) with an implicit PRM trained at `lr`, `beta`, `update`."""
    return ["algorithm.estimator=prime", "algorithm.options={}", "turn_reward.kind=implicit_prm",
            f"turn_reward.prm_lr={lr}", f"turn_reward.prm_beta={beta}", f"turn_reward.prm_update={update}"]


def branching(estimator: list[str], branch: str, extra: list[str] = ()) -> list[str]:
    """`estimator` collecting with `rollout.branch={branch}`, and `extra` overrides (fewer sampled episodes, ...)."""
    return [*estimator, f"rollout.branch={{{branch}}}", *extra]


PRM_HEALTH = ["prm/pair_accuracy", "prm/accuracy", "prm/reward_invalid_minus_valid", "train/invalid_rate"]
BRANCH_REPORT = ["rollout/generated_tokens", "rollout/branches", "train/success", "train/invalid_rate",
                 "optim/skipped_steps"]
QUESTIONS = ["model.name=tiny-questions", "env.id=games/TwentyQuestions-v0", "env.kwargs={}", "env.max_turns=null",
             "rollout.context=full", "rollout.max_new_tokens=7", "rollout.n_groups=8", "optim.minibatches=2",
             "loss.entropy_coef=0", "sft.steps=120", "eval.episodes=112"]
QUESTIONS_IGPO = [*IGPO, "turn_reward.answer_template='it is {answer}'"]
QUESTIONS_IGPO_LOG = [*QUESTIONS_IGPO, "turn_reward.info_gain=log_prob_diff"]
# maze: 16 x 8 sampled episodes of <= 12 turns (~11 after the warm start); "@tokens" plays 16 x 4 and branches 2
# continuations before turn 6 (11 + 2 x 6 = 23 turns for the 22 of two baseline episodes; branching before turns
# 4 and 8 instead generated 2.2-2.5x the baseline's tokens)
MAZE_BRANCH, MAZE_TOKEN_ROOTS = "k: 2, turns: [6]", ["rollout.group_size=4"]
# questions: 8 x 8 episodes of <= 9 turns; "@tokens" plays 8 x 4 and branches 2 continuations before turn 4
# (9 turns: 9 + 2 x 5 = 19 for 18)
QUESTIONS_BRANCH, QUESTIONS_TOKEN_ROOTS = "k: 2, turns: [4]", ["rollout.group_size=4"]
# "@dense": the remedies for the sparse signal of one branch point (docs/credit_assignment.md): equal tokens spent on
# 2 roots per group, each branched at three turns, and no optimizer step on a minibatch with no nonzero advantage.
# Maze: 11 + 2 x (9 + 6 + 3) = 47 turns per root, 94 per group for the baseline's 88; questions: 9 + 2 x (7 + 5 + 3)
# = 39 per root, 78 per group for 72
SKIP_ZERO = "optim.skip_zero_advantage=true"
DENSE_ROOTS = ["rollout.group_size=2", SKIP_ZERO]
MAZE_DENSE, QUESTIONS_DENSE = "k: 2, turns: [3, 6, 9]", "k: 2, turns: [2, 4, 6]"
SUITES = {
    "maze": {
        "overrides": [],  # the quickstart's own: 4x4 mazes, local view
        "estimators": {"grpo": GRPO, "gigpo": GIGPO, "prime": prime(1e-5, 0.05, "after")},
        "report": PRM_HEALTH,
    },
    "prime-sweep": {  # the maze suite's env; PRIME's PRM settings on a small grid, GRPO as the yardstick
        "overrides": [],
        "estimators": {"grpo": GRPO, **{f"prime lr={lr:g} beta={beta:g} {update}": prime(lr, beta, update)
                                         for lr, beta, update in itertools.product((1e-5, 3e-5, 1e-4), (0.05, 0.5),
                                                                                   ("after", "before"))}},
        "report": PRM_HEALTH,
    },
    "questions": {  # 4 attributes x 3 values (81 items, 14 held out, each played 8 times), 9 turns, full history;
        # no entropy bonus (the maze's memoryless policy needs one, this one does not: it raised invalid replies)
        "overrides": QUESTIONS,
        "iterations": 30,
        "estimators": {"grpo": GRPO, "gigpo": GIGPO,
                       # IG in probabilities (the default): an episode's gains sum to p_last - p_first <= 1, the
                       # outcome's scale
                       "igpo": QUESTIONS_IGPO,
                       # IG in log-probabilities, z-scored jointly with the outcome (the default until 2026-12-07)
                       "igpo-log": QUESTIONS_IGPO_LOG,
                       # ... z-scored apart from the outcome, as the released code pairs it
                       "igpo-log-separate": [*QUESTIONS_IGPO_LOG, "algorithm.options={normalize: separate}"],
                       # ablation: the anchors without the invalid-reply penalty GRPO does not get
                       "gigpo-no-penalty": [*GIGPO, "algorithm.options={invalid_penalty: 0.0}"]},
        "report": ["info_gain/informative", "info_gain/redundant", "info_gain/outcome_corr", "train/success",
                   "train/invalid_rate"],
    },
    "branching-maze": {  # the maze suite's env, without the recipe's entropy bonus: branching leaves most turns
        # with advantage 0, where the bonus alone moved the policy (entropy 1.9 -> 3.1, invalid replies 55% -> 83%
        # in 5 iterations, vineppo and spo_tree alike)
        "overrides": ["loss.entropy_coef=0"],
        "estimators": {"grpo": GRPO, "gigpo": GIGPO,
                       "vineppo@tokens": branching(VINEPPO, MAZE_BRANCH, MAZE_TOKEN_ROOTS),
                       "spo_tree@tokens": branching(SPO_TREE, MAZE_BRANCH, MAZE_TOKEN_ROOTS),
                       "vineppo@episodes": branching(VINEPPO, MAZE_BRANCH),
                       "spo_tree@episodes": branching(SPO_TREE, MAZE_BRANCH),
                       "vineppo@dense": branching(VINEPPO, MAZE_DENSE, DENSE_ROOTS),
                       "spo_tree@dense": branching(SPO_TREE, MAZE_DENSE, DENSE_ROOTS)},
        "report": BRANCH_REPORT,
    },
    "branching-questions": {  # the questions suite's env and settings
        "overrides": QUESTIONS,
        "iterations": 30,
        "estimators": {"grpo": GRPO, "gigpo": GIGPO, "igpo": QUESTIONS_IGPO, "igpo-log": QUESTIONS_IGPO_LOG,
                       "vineppo@tokens": branching(VINEPPO, QUESTIONS_BRANCH, QUESTIONS_TOKEN_ROOTS),
                       "spo_tree@tokens": branching(SPO_TREE, QUESTIONS_BRANCH, QUESTIONS_TOKEN_ROOTS),
                       "vineppo@episodes": branching(VINEPPO, QUESTIONS_BRANCH),
                       "spo_tree@episodes": branching(SPO_TREE, QUESTIONS_BRANCH),
                       "vineppo@dense": branching(VINEPPO, QUESTIONS_DENSE, DENSE_ROOTS),
                       "spo_tree@dense": branching(SPO_TREE, QUESTIONS_DENSE, DENSE_ROOTS),
                       # ablation: only a segment's first turn credited (envgym's branching before 2026-12-07)
                       **{f"{name}@dense-turn": branching([f"algorithm.estimator={name}",
                                                           "algorithm.options={scale: batch_rms, credit: turn}"],
                                                          QUESTIONS_DENSE, DENSE_ROOTS)
                          for name in ("vineppo", "spo_tree")}},
        "report": BRANCH_REPORT,
    },
    "smollm2": {  # SmolLM2-135M-Instruct + LoRA, bf16, on 4x4 mazes seen locally (its own recipe, see
        # docs/real_models.md, "Training a real model on a CPU"), 100 held-out mazes
        "recipe": "smollm2_maze.yaml",
        "overrides": ["eval.initial=false"],  # the untrained model's greedy evaluation is the same in every run
        "eval_every": 5,
        "iterations": 30,
        "estimators": {"grpo": GRPO, "gigpo": ["algorithm.estimator=gigpo"],
                       # the next smallest change: updates moved the policy by KL ~0.002 at lr 1e-4
                       "gigpo-lr3e-4": ["algorithm.estimator=gigpo", "optim.lr=3e-4"],
                       # equal tokens: the recipe plays 4 episodes per maze; one root branched at three turns
                       # plays 11 + 2 x (9 + 6 + 3) = 47 turns for their 44
                       **{f"{name}@dense": branching(options, MAZE_DENSE, ["rollout.group_size=1", SKIP_ZERO])
                          for name, options in (("vineppo", VINEPPO), ("spo_tree", SPO_TREE))}},
        "report": ["train/success", "train/invalid_rate", "rollout/logprob_diff_mean", "loss/approx_kl",
                   "time/iteration", "time/eval"],
    },
    "guess": {  # 1-50: 40 train and 10 test secrets, each test secret played 20 times (sampled)
        "overrides": ["model.name=tiny-guess", "env.id=games/GuessNumber-v0", "env.kwargs={low: 1, high: 50}",
                      "env.max_turns=7", "env.show_admissible=false", "rollout.context=full",
                      "rollout.max_new_tokens=2", "sft.steps=60"],
        "estimators": {"grpo": GRPO, "igpo-log": IGPO_LOG},
        "report": ["info_gain/informative", "info_gain/redundant", "info_gain/outcome_corr", "train/success"],
    },
}


def run_dir(out_root: str, suite: str, estimator: str, seed: int) -> Path:
    return Path(out_root) / f"{suite}-{estimator.replace(' ', '_').replace('=', '')}-{seed}"


def run(suite: str, estimator: str, seed: int, iterations: int, out_root: str, resume: bool = False) -> dict:
    """Train one run (`resume`: continue it from its newest checkpoint to `iterations`); returns its `summarize`d
    history."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    from envgym.trainers import Trainer, load_config
    from envgym.trainers.config import recipes_dir

    spec = SUITES[suite]
    overrides = [*spec.get("overrides", []), *spec["estimators"][estimator], f"seed={seed}",
                 f"iterations={iterations}", f"out_dir={run_dir(out_root, suite, estimator, seed)}",
                 f"eval.every={spec.get('eval_every', 5)}", f"threads={spec.get('threads', 1)}"]
    # a re-run measures afresh (the previous run of this suite, estimator and seed is replaced) unless it resumes
    recipe = recipes_dir() / spec.get("recipe", "quickstart.yaml")
    with Trainer(load_config(recipe, overrides), resume=resume, overwrite=not resume) as trainer:
        history = trainer.fit()
    result = summarize(history, spec["report"], time.perf_counter() - started)
    print(f"{estimator} seed {seed}: {result['curve']} ({result['seconds']:.0f} s)", flush=True)
    return result


def summarize(history: list[dict], report: list[str], seconds: float) -> dict:
    """Held-out success of the initial policy, by iteration (0: after the warm start), and the `report` metrics of
    every RL iteration."""
    curve = {int(m["iteration"]): m["eval/success"] for m in history
             if m.get("phase") != "init" and "eval/success" in m}
    initial = next((m["eval/success"] for m in history if m.get("phase") == "init"), None)
    metrics = {int(m["iteration"]): {k: m[k] for k in report if k in m} for m in history if m["phase"] == "rl"}
    return {"initial": initial, "curve": curve, "metrics": metrics, "seconds": seconds}


def load_run(suite: str, estimator: str, seed: int, iterations: int, out_root: str) -> dict:
    """A finished run's `summarize`d history, read back from its metrics.jsonl (for --report-only)."""
    from envgym.run_files import METRICS_FILE, read_metrics

    path = run_dir(out_root, suite, estimator, seed) / METRICS_FILE
    if not path.is_file():
        raise SystemExit(f"--report-only: {path} does not exist; train that run first (drop --report-only)")
    history = read_metrics(path.parent)
    done = max((m["iteration"] for m in history if m.get("phase") == "rl"), default=0)
    if done < iterations:
        raise SystemExit(f"--report-only: {path} stops at iteration {done} of {iterations}; let it finish")
    return summarize([m for m in history if m["iteration"] <= iterations], SUITES[suite]["report"],
                     sum(m.get("time/iteration", 0.0) for m in history))


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} [{min(values):.2f}-{max(values):.2f}]" if values else "-"


def print_table(title: str, rows: list[tuple[str, list[list[float]]]], estimators: list[str]) -> None:
    """`rows`: (label, one list of per-seed values per estimator); cells are mean [min-max] over seeds."""
    shown = [(label, [spread(values) for values in cells]) for label, cells in rows]
    width = max(22, *(len(e) + 2 for e in estimators), *(len(c) + 2 for _, cells in shown for c in cells))
    print(f"\n{title}")
    print(f"{'iteration':>9}" + "".join(f"{e:>{width}}" for e in estimators))
    for label, cells in shown:
        print(f"{label:>9}" + "".join(f"{cell:>{width}}" for cell in cells))


def print_per_seed(results: dict[str, list[dict]], estimators: list[str], seeds: list[int], last: int) -> None:
    """Per estimator and seed: held-out success before anything, after the warm start, at `last`, and the gain."""
    print(f"\nper seed: held-out success initial / after warm start / at iteration {last} (gain over the warm start)")
    for e in estimators:
        cells = []
        for seed, r in zip(seeds, results[e]):
            initial = "-" if r.get("initial") is None else f"{r['initial']:.2f}"
            cells.append(f"seed {seed}: {initial} / {r['curve'][0]:.2f} / {r['curve'][last]:.2f} "
                         f"({r['curve'][last] - r['curve'][0]:+.2f})")
        print(f"{e:>12}  " + "   ".join(cells))


def plot_curves(results: dict[str, list[dict]], estimators: list[str], title: str, path: Path) -> Path:
    """Mean held-out success by iteration per estimator, the band min-max over seeds; the initial model as a cross."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    for e in estimators:
        its = sorted(set.intersection(*(set(r["curve"]) for r in results[e])))
        values = [[r["curve"][it] for r in results[e]] for it in its]
        line, = ax.plot(its, [statistics.mean(v) for v in values], "o-", label=e)
        ax.fill_between(its, [min(v) for v in values], [max(v) for v in values], color=line.get_color(), alpha=0.2)
    initial = [r["initial"] for runs in results.values() for r in runs if r.get("initial") is not None]
    if initial:
        ax.plot([0], [statistics.mean(initial)], "kx", markersize=9, label="before anything")
    ax.set_xlabel("RL iteration (0: after the warm start)")
    ax.set_ylabel("held-out success")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="maze")
    parser.add_argument("--estimators", nargs="*", help="a subset of the suite's estimators")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, help="RL iterations per run (default: the suite's, else 40)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--out", default="runs/credit_assignment")
    parser.add_argument("--report-only", action="store_true", help="print the tables of runs already under --out")
    parser.add_argument("--resume", action="store_true",
                        help="continue each run from its newest checkpoint up to --iterations (extends a finished "
                             "suite; its optimizer, scheduler and random states are restored)")
    parser.add_argument("--plot", type=Path, help="also draw the held-out curves (mean, min-max band) to this PNG")
    args = parser.parse_args()
    spec = SUITES[args.suite]
    unknown = sorted(set(args.estimators or ()) - set(spec["estimators"]))
    if unknown:
        parser.error(f"suite {args.suite!r} has no estimator {unknown[0]!r}; it has: {', '.join(spec['estimators'])}")
    estimators = args.estimators or list(spec["estimators"])
    iterations = args.iterations or spec.get("iterations", 40)
    if args.report_only:
        results = {e: [load_run(args.suite, e, seed, iterations, args.out) for seed in args.seeds] for e in estimators}
    else:
        # a fresh process per run: a worker's memory grows through a SmolLM2 run and was OOM-killed in its third
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=spawn, max_tasks_per_child=1) as pool:
            # seed-major, so every estimator's first seed is done early
            futures = {(e, seed): pool.submit(run, args.suite, e, seed, iterations, args.out, args.resume)
                       for seed in args.seeds for e in estimators}
            results = {e: [futures[e, seed].result() for seed in args.seeds] for e in estimators}

    evaluated = sorted(set.intersection(*(set(r["curve"]) for runs in results.values() for r in runs)))
    initial = [("initial", [[r["initial"] for r in results[e] if r.get("initial") is not None] for e in estimators])]
    print_table(f"held-out success, suite {args.suite}, seeds {args.seeds}: mean [min-max]; initial = the model "
                "before anything, iteration 0 = after warm start",
                initial + [(str(it), [[r["curve"][it] for r in results[e]] for e in estimators]) for it in evaluated],
                estimators)
    print_per_seed(results, estimators, args.seeds, evaluated[-1])
    stretches = [(a + 1, b) for a, b in zip(evaluated, evaluated[1:])]
    for metric in spec["report"]:
        shown = [e for e in estimators if any(metric in m for r in results[e] for m in r["metrics"].values())]
        if not shown:
            continue
        rows = []
        for a, b in stretches:
            cells = []
            for e in shown:
                per_seed = [[r["metrics"][it][metric] for it in range(a, b + 1) if metric in r["metrics"].get(it, {})]
                            for r in results[e]]
                cells.append([statistics.mean(v) for v in per_seed if v])
            rows.append((f"{a}-{b}", cells))
        print_table(f"{metric}, mean over the iterations of each stretch: mean [min-max] over seeds", rows, shown)
    print_table("wall time of a run (s; a live run's includes its warm start and evaluations, --report-only sums "
                "the RL iterations'): mean [min-max] over seeds",
                [("all", [[r["seconds"] for r in results[e]] for e in estimators])], estimators)
    if args.plot:
        print(f"wrote {plot_curves(results, estimators, f'suite {args.suite}, seeds {args.seeds}', args.plot)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"summary-{args.suite}.json").write_text(json.dumps({"suite": args.suite, "seeds": args.seeds,
                                                                "iterations": iterations, "runs": results}))


if __name__ == "__main__":
    main()
