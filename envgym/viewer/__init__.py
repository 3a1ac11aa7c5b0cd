"""`envgym view PATH`: one self-contained HTML page for a training run or an evaluation report.

    envgym view runs/quickstart            # writes runs/quickstart/view.html
    envgym view reports/eval --open        # ... and opens it in a browser where one exists

A run directory gives the learning curve, the table of iterations (`metrics.jsonl`) and the
stored episode samples (`episodes/`, see `envgym.run_files`); a report directory
gives the per-policy table and its episodes (`report.json`, `episodes/`). The page embeds
its data as JSON plus the script that draws it (`page.html`, `page.js` next to this file): no
server, no network, nothing fetched. Strings, token-id sequences and token texts are stored
once each and referenced by index, floats are rounded to 4 significant digits, so a page of
40 iterations x 50 episodes stays a few MB.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from envgym.run_files import EPISODES_DIR, METRICS_FILE, checkpoint_configs, read_metrics, read_samples
from envgym.trajectory import Group, load_groups

PAGE_FILE = "view.html"
REPORT_FILE = "report.json"  # as written by envgym.evaluation.EvalReport.save
#: One stored turn in the page: a list in this order (strings and id sequences as table indices).
TURN_FIELDS = ("observation", "action", "reward", "state", "invalid", "finish", "advantage", "intrinsic",
               "anchor", "obs_ids", "action_ids", "logprobs", "new_logprobs")
_HERE = Path(__file__).parent


def _num(x: Any) -> Any:
    """A JSON-safe number rounded to 4 significant digits; NaN and infinities become the strings 'nan', 'inf'."""
    if isinstance(x, bool) or x is None or isinstance(x, int):
        return x
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    return float(f"{x:.4g}")


def _logprobs(values: Sequence[float]) -> list[Any]:
    """Logprobs to 4 decimals (ratios stay exact to 0.01%); NaN and infinities as strings, as in `_num`."""
    return [round(x, 4) if math.isfinite(x) else str(x) for x in values]


class _Tables:
    """Interned values: each distinct string or id sequence is stored once; turns refer to it by index."""

    def __init__(self) -> None:
        self.strings: dict[str, int] = {}
        self.id_seqs: dict[tuple[int, ...], int] = {}
        self.vocab: dict[int, str] = {}

    @staticmethod
    def _index(table: dict[Hashable, int], value: Hashable) -> int:
        index = table.get(value)
        if index is None:
            index = table[value] = len(table)
        return index

    def string(self, text: str) -> int:
        return self._index(self.strings, text)

    def ids(self, ids: Sequence[int], tokens: Sequence[str] | None) -> int:
        if tokens:
            self.vocab.update(zip(ids, tokens))
        return self._index(self.id_seqs, tuple(ids))

    def to_json(self) -> dict[str, Any]:
        return {"strings": list(self.strings), "id_seqs": [list(s) for s in self.id_seqs],
                "vocab": {str(i): t for i, t in self.vocab.items()}}


def _group_json(group: Group, tables: _Tables) -> dict[str, Any]:
    from envgym.diagnose import anchor_hit_rate

    episodes = []
    for episode, sizes in zip(group.episodes, group.anchor_sizes()):
        turns = []
        for turn, anchor in zip(episode.turns, sizes):
            notes = turn.annotations
            turns.append([
                tables.string(turn.observation), tables.string(turn.action), _num(turn.reward),
                tables.string(turn.state_key), int(turn.invalid_action), turn.finish.value,
                _num(notes.get("advantage")), _num(notes.get("intrinsic")), anchor,
                tables.ids(turn.obs_ids, notes.get("obs_tokens")),
                tables.ids(turn.action_ids, notes.get("action_tokens")),
                _logprobs(turn.logprobs), _logprobs(notes["new_logprobs"]) if "new_logprobs" in notes else None])
        episodes.append({"won": episode.won, "end": episode.end.value, "return": _num(episode.total_return),
                         "final": tables.string(episode.final_observation), "answer": episode.answer,
                         "parent": episode.parent, "branch_turn": episode.branch_turn, "turns": turns})
    returns = [e.total_return for e in group.episodes]
    return {"env_id": group.env_id, "split": group.split, "task": group.task, "seed": group.seed,
            "wins": sum(e.won for e in group.episodes), "mean_return": _num(sum(returns) / len(returns)),
            "anchor_hit_rate": _num(anchor_hit_rate([group])), "episodes": episodes}


def _sample_json(label: str, groups: Sequence[Group], failures: list[dict[str, Any]], tables: _Tables,
                 **extra: Any) -> dict[str, Any]:
    return {"label": label, "groups": [_group_json(g, tables) for g in groups], "failures": failures, **extra}


def _metrics_json(run_dir: Path) -> list[dict[str, Any]]:
    return [{k: _num(v) if isinstance(v, float) else v for k, v in row.items()} for row in read_metrics(run_dir)]


def _run_config(run_dir: Path) -> dict[str, Any] | None:
    """The config of the run's latest checkpoint (checkpoints/iter_*/config.yaml), if any."""
    import yaml

    configs = checkpoint_configs(run_dir)
    return yaml.safe_load(configs[-1].read_text(encoding="utf-8")) if configs else None


def _run_json(run_dir: Path, tables: _Tables) -> dict[str, Any]:
    samples = [_sample_json(f"iteration {s.iteration}", s.groups, s.failures, tables, iteration=s.iteration,
                            groups_collected=s.groups_collected) for s in read_samples(run_dir)]
    return {"config": _run_config(run_dir), "metrics": _metrics_json(run_dir), "samples": samples}


def _eval_json(report_dir: Path, tables: _Tables) -> dict[str, Any]:
    from envgym.rollout import group_seed

    report = json.loads((report_dir / REPORT_FILE).read_text(encoding="utf-8"))
    seed = report.get("settings", {}).get("seed", 0)
    samples = []
    for index, row in enumerate(report["results"]):
        episodes_file = row.get("episodes_file")
        groups = load_groups(report_dir / episodes_file) if episodes_file else []
        # the page shows failures as the trainer stores them (`EpisodeFailure`): the seed finds the group
        failures = [{"group": f["group"], "member": f["episode"], "attempt": f["attempt"] - 1,
                     "seed": group_seed(seed, f["group"]), "cause": f["cause"]} for f in row.get("failures", [])]
        samples.append(_sample_json(f"{row['env_id']} · {row['policy']}", groups, failures, tables, result=index))
    results = [{k: v for k, v in row.items() if k not in ("failures",)} for row in report["results"]]
    return {"settings": report.get("settings", {}), "results": results, "samples": samples}


def build_view_data(path: str | Path) -> dict[str, Any]:
    """The page's data for a run directory and/or an eval report directory at `path`.

    Raises ValueError if `path` holds neither (no metrics.jsonl, episodes/ or report.json).
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is not a directory; pass a training run's out_dir or an eval report dir")
    is_run = (root / METRICS_FILE).exists() or ((root / EPISODES_DIR).is_dir() and not (root / REPORT_FILE).exists())
    is_eval = (root / REPORT_FILE).exists()
    if not (is_run or is_eval):
        raise ValueError(f"{str(root)!r} holds neither a training run ({METRICS_FILE}, {EPISODES_DIR}/) nor an "
                         f"evaluation report ({REPORT_FILE}); pass the out_dir of `envgym train` or the --out of "
                         "`envgym eval`")
    tables = _Tables()
    data: dict[str, Any] = {"title": root.resolve().name, "source": str(root.resolve()),
                            "created": time.strftime("%Y-%m-%d %H:%M:%S"), "turn_fields": list(TURN_FIELDS),
                            "run": _run_json(root, tables) if is_run else None,
                            "eval": _eval_json(root, tables) if is_eval else None}
    data.update(tables.to_json())
    return data


def render_page(data: dict[str, Any]) -> str:
    """The HTML page for `data` (from `build_view_data`): template, stylesheet, script and data in one file."""
    # "</" inside the embedded JSON would end its <script> element early; "<\/" is the same JSON string
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    template = (_HERE / "page.html").read_text(encoding="utf-8")
    script = (_HERE / "page.js").read_text(encoding="utf-8")
    return template.replace("/*__SCRIPT__*/", script, 1).replace("__DATA__", payload, 1)


def write_view(path: str | Path, out: str | Path | None = None) -> Path:
    """Write the page for the run or report at `path` to `out` (default `path/view.html`); returns its path."""
    page = render_page(build_view_data(path))
    target = Path(out) if out is not None else Path(path) / PAGE_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return target
