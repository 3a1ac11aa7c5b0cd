"""`envgym view`: the page's data, its self-containment, the CLI, and the page itself in headless Chromium."""

import dataclasses
import json
import math
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from envgym.evaluation import EvalSettings, evaluate, summarize
from envgym.rollout import RolloutResult
from envgym.trainers import Trainer, config_from_dict
from envgym.run_files import read_samples, write_sample
from envgym.trajectory import Episode, EpisodeEnd, Group, Turn
from envgym.viewer import TURN_FIELDS, build_view_data, render_page, write_view

RUN = {"iterations": 3, "threads": 1,
       "env": {"id": "games/Maze-v0", "kwargs": {"size": 3}, "max_turns": 4, "show_admissible": True},
       "rollout": {"n_groups": 3, "group_size": 3, "max_new_tokens": 2, "context": "window", "window": 0},
       "optim": {"epochs": 1, "micro_batch_tokens": 1024}, "eval": {"every": 2, "episodes": 4},
       "checkpoint": {"every": 3}, "log_episodes": {"every": 1, "groups": 2},
       "sft": {"steps": 30, "episodes": 64, "batch_tokens": 2048}}  # valid moves, some wins: advantages differ
HOSTILE = "</script><script>document.title='pwned'</script><img src=x onerror=alert(1)> & \u2603"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A real 3-iteration training run of the tiny model on 3x3 mazes (seconds), episodes stored every iteration.

    A short warm start first, so that episodes differ and their advantages are far from 0.
    """
    out = tmp_path_factory.mktemp("viewer") / "run"
    Trainer(config_from_dict({**RUN, "out_dir": str(out)})).fit()
    return out


@pytest.fixture(scope="module")
def eval_report(tmp_path_factory):
    """A scripted and a random policy evaluated on mazes, plus a row whose episode text tries to break the page."""
    out = tmp_path_factory.mktemp("viewer_eval")
    report = evaluate("games/Maze-v0", ["scripted", "random"], EvalSettings(episodes=3, samples=2, seed=1))
    turn = Turn(observation=HOSTILE, action=HOSTILE, reward=1.0, state_key="s", invalid_action=False)
    episode = Episode("hostile/Env-v0", "test", 0, 5, (turn,), EpisodeEnd.TERMINATED, won=True,
                      final_observation=HOSTILE)
    rollout = RolloutResult([Group("hostile/Env-v0", "test", 0, 5, (episode,))],
                            {"dropped_groups": 0.0, "retries": 0.0, "wall_time": 0.0})
    report.rows.append(summarize("hostile/Env-v0", "scripted", rollout, tasks=1, samples=1))
    report.rollouts.append(rollout)
    report.save(out)
    return out


def not_json(constant):
    raise ValueError(f"{constant} is not JSON")


def turn_dict(data, row):
    return dict(zip(data["turn_fields"], row))


def test_run_data_holds_every_stored_turn_losslessly_enough(small_run):
    data = build_view_data(small_run)
    samples = read_samples(small_run)
    assert data["turn_fields"] == list(TURN_FIELDS) and data["eval"] is None
    assert [s["iteration"] for s in data["run"]["samples"]] == [1, 2, 3]
    assert [m["iteration"] for m in data["run"]["metrics"]] == [0, 0, 1, 2, 3]  # init, sft, 3 iterations
    assert data["run"]["config"]["env"]["id"] == "games/Maze-v0"
    strings, seqs, vocab = data["strings"], data["id_seqs"], data["vocab"]
    for stored, shown in zip(samples, data["run"]["samples"]):
        for group, g in zip(stored.groups, shown["groups"]):
            assert g["seed"] == group.seed and g["wins"] == sum(e.won for e in group.episodes)
            for episode, e in zip(group.episodes, g["episodes"]):
                for turn, row in zip(episode.turns, e["turns"]):
                    t = turn_dict(data, row)
                    assert strings[t["observation"]] == turn.observation and strings[t["action"]] == turn.action
                    assert strings[t["state"]] == turn.state_key and t["anchor"] == turn.annotations["anchor_size"]
                    assert seqs[t["obs_ids"]] == list(turn.obs_ids) and seqs[t["action_ids"]] == list(turn.action_ids)
                    assert [vocab[str(i)] for i in turn.action_ids] == turn.annotations["action_tokens"]
                    assert t["advantage"] == pytest.approx(turn.annotations["advantage"], rel=1e-3, abs=1e-9)
                    assert t["new_logprobs"] == pytest.approx(turn.annotations["new_logprobs"], abs=1e-4)
                    assert t["logprobs"] == pytest.approx(list(turn.logprobs), abs=1e-4)
    # interning: the page stores each distinct observation once
    observations = [t.observation for s in samples for g in s.groups for e in g.episodes for t in e.turns]
    assert len(strings) < len(observations) + len(set(observations)) * 3


def test_page_is_self_contained(small_run, eval_report):
    for path in (small_run, eval_report):
        page = render_page(build_view_data(path))
        assert "Content-Security-Policy" in page and "default-src 'none'" in page  # the browser may fetch nothing
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page, flags=re.I)
        assert not re.search(r"\b(fetch|XMLHttpRequest|WebSocket|importScripts)\s*\(", page)
        assert "<link" not in page and page.count("</script>") == 2  # only the two script elements end


def test_nan_metrics_and_logprobs_are_kept_visible(tmp_path, small_run):
    """A run that blew up still gets a page (JSON has no NaN: they travel as strings the page shows)."""
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    row = json.loads(lines[-1]) | {"loss/policy": float("nan"), "loss/grad_norm": float("inf")}
    (run / "metrics.jsonl").write_text("\n".join([*lines[:-1], json.dumps(row)]) + "\n")
    sample = read_samples(run)[-1]
    group = sample.groups[0]
    first = group.episodes[0].turns[0]
    broken = dataclasses.replace(first, annotations={**first.annotations,
                                                     "new_logprobs": [float("nan")] * len(first.action_ids)})
    episode = dataclasses.replace(group.episodes[0], turns=(broken, *group.episodes[0].turns[1:]))
    groups = [dataclasses.replace(group, episodes=(episode, *group.episodes[1:])), *sample.groups[1:]]
    write_sample(run, sample.iteration, groups, failures=[], groups_collected=sample.groups_collected)
    data = build_view_data(run)
    last = data["run"]["metrics"][-1]
    assert last["loss/policy"] == "nan" and last["loss/grad_norm"] == "inf"
    shown = data["run"]["samples"][-1]["groups"][0]["episodes"][0]["turns"][0]
    assert turn_dict(data, shown)["new_logprobs"][0] == "nan"
    payload = render_page(data).split('id="envgym-data">')[1].split("</script>")[0]
    json.loads(payload, parse_constant=not_json)  # JSON.parse in the browser rejects NaN and Infinity


def test_eval_report_data(eval_report):
    data = build_view_data(eval_report)
    assert data["run"] is None
    results, samples = data["eval"]["results"], data["eval"]["samples"]
    assert [r["policy"] for r in results] == ["scripted", "random", "scripted"]
    assert [len(s["groups"]) for s in samples] == [3, 3, 1]
    assert all(len(g["episodes"]) == 2 for s in samples[:2] for g in s["groups"])
    assert samples[0]["groups"][0]["wins"] == 2  # the oracle wins every maze
    hostile = turn_dict(data, samples[2]["groups"][0]["episodes"][0]["turns"][0])
    assert data["strings"][hostile["observation"]] == HOSTILE


def test_view_command(tmp_path, small_run, capsys):
    from envgym.cli import main

    assert main(["view", str(small_run), "--out", str(tmp_path / "page.html")]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "page.html").stat().st_size > 10_000
    assert main(["view", str(tmp_path / "nothing-here")]) == 2
    assert "is not a directory" in " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert main(["view", str(tmp_path)]) == 2
    assert "holds neither a training run" in " ".join(capsys.readouterr().out.split())


# ---------------------------------------------------------------------------------------------- in a real browser

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,2200")


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no Chromium: install Debian's chromium and chromium-driver (scripts/setup.sh does as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="envgym-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path: Path):
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 30).until(lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "1")
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors  # a script error or a blocked fetch (the page's CSP) would show here


def number(text: str) -> float:
    return float(re.search(r"-?\d+(\.\d+)?(e[-+]?\d+)?", text).group())


def test_browser_click_through_run(browser, small_run, tmp_path):
    from PIL import Image

    page = write_view(small_run, tmp_path / "view.html")
    open_page(browser, page)
    by_css = lambda selector: browser.find_elements("css selector", selector)  # noqa: E731
    metrics = [json.loads(line) for line in (small_run / "metrics.jsonl").read_text().splitlines()]
    rows = by_css("#iteration-table tbody tr")
    assert len(rows) == len(metrics) == 5
    headers = [th.text for th in by_css("#iteration-table thead th")]
    entropy = rows[3].find_elements("tag name", "td")[headers.index("entropy")].text
    assert number(entropy) == pytest.approx(metrics[3]["loss/entropy"], abs=1e-3)
    assert len(by_css("#curve svg circle.point")) >= 3  # held-out and train success points

    # the turn with the largest |advantage| of iteration 2: open its group, then its token view
    sample = next(s for s in read_samples(small_run) if s.iteration == 2)
    g, e, k, turn = max(((g, e, k, t) for g, group in enumerate(sample.groups)
                         for e, episode in enumerate(group.episodes) for k, t in enumerate(episode.turns)),
                        key=lambda x: abs(x[3].annotations["advantage"]))
    assert abs(turn.annotations["advantage"]) > 0.1  # else a wrong number could pass the checks below
    by_css("#iteration-table tr.clickable[data-iteration='2']")[0].click()
    assert by_css("#sample option:checked")[0].text == "iteration 2"
    assert len(by_css("#group-table tr.group-row")) == len(sample.groups)
    by_css(f"#group-table tr.group-row[data-group='{g}']")[0].click()
    columns = by_css("#episodes .episode")
    assert len(columns) == len(sample.groups[g].episodes)
    cell = by_css(f"#episodes .turn[data-episode='{e}'][data-turn='{k}']")[0]
    advantage = turn.annotations["advantage"]
    assert number(cell.find_element("css selector", ".adv").text.replace("A ", "")) == pytest.approx(
        advantage, rel=2e-3, abs=1e-3)
    if turn.annotations["anchor_size"] > 1:
        assert f"anchor ×{turn.annotations['anchor_size']}" in cell.text
    assert ("invalid" in cell.text) == turn.invalid_action
    cell.click()

    facts = dict(zip(*[iter(el.text for el in by_css("#token-facts div"))] * 2))
    assert number(facts["advantage"]) == pytest.approx(advantage, rel=2e-3, abs=1e-3)
    assert facts["state key"] == turn.state_key
    assert facts["tokens"].startswith(f"{len(turn.obs_ids)} prompt (masked, no loss) + {len(turn.action_ids)} sampled")
    assert len(by_css("#tokens .tok.masked")) == len(turn.obs_ids)
    token_rows = by_css("#token-rows tbody tr")
    assert len(token_rows) == len(turn.action_ids) == len(by_css("#tokens .tok.trained"))
    for i, row in enumerate(token_rows):
        cells = [td.text for td in row.find_elements("tag name", "td")]
        assert int(cells[1]) == turn.action_ids[i]
        assert json.loads(cells[2]) == turn.annotations["action_tokens"][i]
        assert number(cells[3]) == pytest.approx(turn.logprobs[i], abs=1e-3)
        assert number(cells[4]) == pytest.approx(turn.annotations["new_logprobs"][i], abs=1e-3)
        assert number(cells[5]) == pytest.approx(math.exp(turn.annotations["new_logprobs"][i] - turn.logprobs[i]),
                                                 abs=1e-3)

    shot = tmp_path / "viewer.png"
    assert browser.save_screenshot(str(shot))
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    background = max(colours)[0] / (image.width * image.height)
    assert len(colours) > 200 and background < 0.9, "the screenshot is (nearly) blank"


def test_browser_eval_report_and_hostile_text(browser, eval_report):
    page = write_view(eval_report)
    open_page(browser, page)
    assert browser.title.startswith("envgym view")  # the episode text's <script> did not run
    rows = browser.find_elements("css selector", "#eval-table tbody tr")
    assert [r.find_elements("tag name", "td")[1].text for r in rows] == ["scripted", "random", "scripted"]
    assert "100.0%" in rows[0].text
    rows[2].click()
    cell = browser.find_elements("css selector", "#episodes .turn[data-episode='0'][data-turn='0']")[0]
    assert "</script><script>" in cell.text and "onerror=alert(1)" in cell.text
    assert not browser.find_elements("css selector", "#episodes img")
    cell.click()
    assert "no tokens" in browser.find_element("css selector", "#tokens").text


def test_browser_shows_a_branched_group_as_a_tree(browser, small_run, tmp_path):
    """Branch episodes (`rollout.branch`) sit under their parent, say where they forked, and number their turns
    from the branch point."""
    from envgym.branching import BranchOptions
    from envgym.policies import load_policy
    from envgym.rollout import collect_groups

    group = collect_groups("games/Maze-v0", load_policy("scripted"), n_groups=1, group_size=2, seed=1,
                           branch=BranchOptions(k=2, turns=[1])).groups[0]
    branches = [(e, ep) for e, ep in enumerate(group.episodes) if ep.parent is not None]
    assert len(branches) == 4 and all(ep.branch_turn == 1 for _, ep in branches)
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    sample = read_samples(run)[0]
    write_sample(run, sample.iteration, [group], failures=[], groups_collected=1)
    data = build_view_data(run)
    shown = data["run"]["samples"][0]["groups"][0]["episodes"]
    assert [(e["parent"], e["branch_turn"]) for e in shown] == [(ep.parent, ep.branch_turn) for ep in group.episodes]

    open_page(browser, write_view(run, tmp_path / "view.html"))
    browser.find_elements("css selector", "#iteration-table tr.clickable[data-iteration='1']")[0].click()
    browser.find_elements("css selector", "#group-table tr.group-row[data-group='0']")[0].click()
    assert "2 sampled episodes and 4 branches" in browser.find_element("css selector", "#group-title").text
    columns = browser.find_elements("css selector", "#episodes .episode")
    order = [int(c.get_attribute("data-episode")) for c in columns]
    parents = [group.episodes[e].parent for e in order]
    assert parents[0] is None and sorted(order) == list(range(len(group.episodes)))
    for position, e in enumerate(order):  # every branch comes after its parent, with only its siblings between
        if parents[position] is not None:
            assert order.index(parents[position]) < position
            assert all(p is not None for p in parents[order.index(parents[position]) + 1:position])
    e, branch = branches[0]
    column = columns[order.index(e)]
    assert "branch" in column.get_attribute("class").split()
    assert f"branch of episode {branch.parent} at turn 1" in column.text
    first = column.find_element("css selector", f".turn[data-episode='{e}'][data-turn='0']")
    assert first.text.startswith("t1 ")  # the branch's first turn is turn 1 of the episode it forked
