"""`envgym diagnose`: anchor hit rates, reward ranges, turns to win, and probes that catch rewards for junk."""

import gymnasium
import pytest

import envgym
from envgym import registration
from envgym.diagnose import PROBES, anchor_hit_rate, branching_stats, diagnose, turn_values
from envgym.envs.games.maze import Maze
from envgym.trajectory import Episode, EpisodeEnd, Group, Turn


class PaysForJunk(Maze):
    """A maze whose reward can be hacked: 1 for a reply over 1,000 characters, 0.5 for one holding an answer tag."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if len(action) > 1000:
            reward = 1.0
        elif "<answer>" in action:
            reward = 0.5
        return obs, reward, terminated, truncated, info


class HistoryKeyed(envgym.Env):
    """Choose one of 1,000 words per turn for 8 turns; the state is the whole history, so paths rarely meet."""

    instructions, action_format = "Say one of the listed words each turn.", "a word w0 ... w999"
    num_tasks = {"train": 20, "test": 5}
    words = [f"w{i}" for i in range(1000)]

    def task_key(self, split, index):
        return f"history|{split}|{index}"

    def reset(self, *, seed=None, options=None):
        self.select_task(seed, options)
        self.history = []
        return "Say a word.", self._info()

    def _info(self, invalid=False):
        return {"state_key": "/".join(self.history), "invalid_action": invalid, "admissible_actions": self.words}

    def step(self, action):
        action = self.check_action(action).strip()
        if action not in self.words:
            return "Not a listed word.", 0.0, False, False, self._info(True)
        self.history.append(action)
        done = len(self.history) == 8
        return "Say another word.", float(done and set(self.history) == {"w0"}), done, False, self._info()

    def oracle_action(self):
        return "w0"


@pytest.fixture
def test_envs():
    ids = {"diag/PaysForJunk-v0": PaysForJunk, "diag/HistoryKeyed-v0": HistoryKeyed}
    for env_id, cls in ids.items():
        envgym.register(env_id, cls, max_turns=30, kwargs={"size": 3} if cls is PaysForJunk else {})
    yield ids
    for env_id in ids:
        registration._registry.pop(env_id, None)
        gymnasium.registry.pop(env_id, None)


def episode(*keys):
    return Episode("x", "train", 0, 0, tuple(Turn("obs", "act", 0.0, key, False) for key in keys),
                   EpisodeEnd.TERMINATED)


def test_anchor_hit_rate_counts_turns_whose_state_recurs_in_their_group():
    group = Group("x", "train", 0, 0, (episode("a", "b", "c"), episode("a", "d")))
    assert group.anchor_sizes() == [[2, 1, 1], [2, 1]]
    assert anchor_hit_rate([group]) == pytest.approx(2 / 5)
    assert anchor_hit_rate([group], from_turn=1) == 0.0
    loop = Group("y", "train", 0, 0, (episode("a", "b", "a"),))
    assert anchor_hit_rate([group, loop]) == pytest.approx(4 / 8)  # a loop within one episode is an anchor too
    assert anchor_hit_rate([]) == 0.0


def branch(turn, *rewards):
    turns = tuple(Turn("obs", "act", r, "k", False) for r in rewards)
    return Episode("x", "train", 0, 0, turns, EpisodeEnd.TERMINATED, parent=0, branch_turn=turn)


def test_branching_probe_values_turns_by_their_continuations():
    root = Episode("x", "train", 0, 0, tuple(Turn("obs", "act", r, "k", False) for r in (0.0, 0.0, 1.0)),
                   EpisodeEnd.TERMINATED)
    group = Group("x", "train", 0, 0, (root, branch(0, 0, 1), branch(0, 0), branch(1, 1), branch(1, 0, 1),
                                       branch(2, 0), branch(2, 1)))
    assert turn_values(group) == [0.5, 1.0, 0.5, 0.0]
    stats = branching_stats("mix", 2, [group], [])
    # swings |r_t + V_{t+1} - V_t|: |0 + 1 - 0.5|, |0 + 0.5 - 1|, |1 + 0 - 0.5|
    assert stats.mean_swing == 0.5 and stats.value_spread == 0.5
    assert stats.decisive_share == pytest.approx(1 / 3) and stats.decisive_position == 0.0
    assert stats.values_by_turn == [0.5, 1.0, 0.5]


def test_maze_diagnosis_has_anchors_ranges_and_no_findings():
    report = diagnose("games/Maze-v0", env_kwargs={"size": 4}, groups=3, group_size=4, probe_tasks=2)
    random, mixed, oracle = report.policies
    assert [p.policy for p in report.policies] == ["random", "oracle 50%", "oracle"]
    assert oracle.success_rate == 1.0 and oracle.anchor_hit_rate == 1.0  # one deterministic path, G times
    assert oracle.turn_reward == (0.0, 1.0) and oracle.episode_return == (1.0, 1.0)
    assert oracle.turns_to_win[1] <= oracle.turns_to_win[0] <= oracle.turns_to_win[2]
    assert random.episodes == 12 and 0.5 < random.anchor_hit_rate <= 1.0  # a random walk revisits cells
    assert mixed.turns_to_win is None or mixed.turns_to_win[0] >= oracle.turns_to_win[1]
    assert [p.probe for p in report.probes] == list(PROBES)
    assert all(p.turns >= 2 and not p.findings for p in report.probes)
    assert report.warnings == []
    text = report.render()
    assert "anchor hits" in text and "no warnings" in text
    branching = report.branching
    assert branching.episodes == 3 and branching.mean_swing > 0.01 and 0 < branching.value_spread <= 1
    assert "branching probe (oracle 50% play, 8 continuations from every turn of 3 episodes)" in text


def test_probes_find_rewards_for_junk(test_envs):
    report = diagnose("diag/PaysForJunk-v0", groups=2, group_size=2, probe_tasks=2)
    found = {p.probe: p for p in report.probes if p.findings}
    assert set(found) == {"overlong", "format-only"}
    assert found["overlong"].max_reward == 1.0 and found["format-only"].max_reward == 0.5
    assert "reward 0.5 for '<action></action> <answer></answer>'" in found["format-only"].findings[0]
    warnings = report.warnings
    assert len(warnings) == 2 and all("earned reward" in w for w in warnings)
    assert "EARNED REWARD (max 1)" in report.render()


def test_history_keyed_states_warn_that_gigpo_has_nothing_to_group(test_envs):
    report = diagnose("diag/HistoryKeyed-v0", groups=3, group_size=6, probe_tasks=1)
    random = report.policies[0]
    assert random.anchor_hit_rate_after_first < 0.05 < random.anchor_hit_rate  # only turn 0 is shared
    assert any("GiGPO's step level has little to group" in w for w in report.warnings)
    assert report.policies[2].turns_to_win == (8, 8, 8)


def test_values_that_never_move_warn_that_turn_credit_has_nothing_to_assign(test_envs):
    report = diagnose("diag/HistoryKeyed-v0", groups=2, group_size=2, probe_tasks=0, branch_k=2,
                      branch_policy="random")
    assert report.branching.mean_swing == 0.0 and report.branching.values_by_turn == [0.0] * 8
    assert any("turn-level credit (vineppo, spo_tree, GiGPO) has little to assign" in w for w in report.warnings)
    with pytest.raises(ValueError, match="branch_policy 'mix' or 'random'"):
        diagnose("diag/HistoryKeyed-v0", branch_policy="oracle")


def test_guess_number_accepts_a_repeated_guess(test_envs):
    """A real finding on a built-in env: GuessNumber reads the first number of '3 3 3 ...' as the guess."""
    report = diagnose("games/GuessNumber-v0", groups=2, group_size=2, probe_tasks=2)
    (finding,) = [p for p in report.probes if p.findings]
    assert finding.probe == "repeated" and finding.max_reward == 1.0


def test_diagnose_and_check_commands(capsys):
    from envgym.cli import main

    small = ["--groups", "2", "--group-size", "2", "--probe-tasks", "1"]
    assert main(["diagnose", "games/Maze-v0", "size=3", *small]) == 0
    assert "reward-hacking probes" in capsys.readouterr().out
    assert main(["check", "games/GuessNumber-v0", "--diagnose", "--groups", "2", "--group-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out
    assert "WARNING probe 'repeated' (the right action written 16 times" in " ".join(out.split())
    assert main(["diagnose", "games/Mazee-v0"]) == 2
    assert "did you mean 'games/Maze-v0'" in capsys.readouterr().out
    assert main(["diagnose", "games/Maze-v0", "--group-size", "1"]) == 2
    assert "group_size >= 2" in " ".join(capsys.readouterr().out.split())
