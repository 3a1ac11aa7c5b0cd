"""Sokoban: generated levels are solvable, the solver is optimal on a hand-made level, moves follow the rules."""

import pytest

import envgym
from envgym.envs.games.sokoban import Level, Sokoban


def _level(rows: list[str]) -> Level:
    """A Level from an XSB drawing ('#', ' ', '.', '$', '@')."""
    size = len(rows)
    flat = "".join(row.ljust(size) for row in rows)
    walls = frozenset(i for i, ch in enumerate(flat) if ch == "#")
    goals = frozenset(i for i, ch in enumerate(flat) if ch in ".*+")
    boxes = tuple(sorted(i for i, ch in enumerate(flat) if ch in "$*"))
    return Level(size, walls, goals, (flat.index("@"), boxes))


def test_solver_finds_the_shortest_solution_of_a_known_level():
    level = _level(["#####",
                    "#@$.#",
                    "#   #",
                    "#   #",
                    "#####"])
    assert level.solve(level.start) == ["east"]
    stuck = _level(["#####",
                    "#$ .#",
                    "# @ #",
                    "#   #",
                    "#####"])
    assert stuck.solve(stuck.start) is None  # a box in a corner never moves


def test_push_rules():
    level = _level(["######",
                    "#@$$.#",
                    "#    #",
                    "#    #",
                    "#    #",
                    "######"])
    assert level.move(level.start, "east") is None  # two boxes in a row
    assert level.move(level.start, "north") is None  # wall
    player, boxes = level.move(level.start, "south")
    assert boxes == level.start[1]


def test_oracle_solves_test_tasks_in_the_fewest_moves():
    env = envgym.make("games/Sokoban-v0", size=7, num_boxes=2, min_moves=8)
    for task in range(5):
        obs, info = env.reset(options={"split": "test", "task": task})
        optimal = len(env.unwrapped.level.solve(env.unwrapped.level.start))
        assert optimal >= 8
        turns, total = 0, 0.0
        terminated = truncated = False
        while not (terminated or truncated):
            obs, reward, terminated, truncated, info = env.step(env.unwrapped.oracle_action())
            turns += 1
            total += reward
        assert info["won"] and terminated and turns == optimal
        assert total == pytest.approx(1.0 + 0.2)  # two boxes onto goals, then the solve bonus
        assert obs.count("*") == 2 and "$" not in obs


def test_oracle_replans_after_a_detour():
    env = Sokoban()
    for task in range(3):
        env.reset(options={"split": "train", "task": task})
        optimal = len(env.level.solve(env.state))
        env.oracle_action()  # plan from the start, then walk off the plan without pushing a box
        detour = next(m for m in ("north", "south", "east", "west")
                      if (nxt := env.level.move(env.state, m)) is not None and nxt[1] == env.state[1]
                      and m != env.oracle_action())
        env.step(detour)
        for _ in range(optimal + 1):
            _, _, terminated, _, info = env.step(env.oracle_action())
            if terminated:
                break
        assert info["won"]


def test_refusals_change_nothing():
    env = Sokoban()
    obs0, info0 = env.reset(seed=3)
    for bad in ("", "jump", "north north", "\x00\xff"):
        obs, reward, terminated, _, info = env.step(bad)
        assert info["invalid_action"] and reward == 0.0 and not terminated
        assert info["state_key"] == info0["state_key"] and obs.endswith(obs0)
    with pytest.raises(TypeError, match="must be str"):
        env.step(3)


def test_state_key_names_the_state_not_the_route():
    env = Sokoban()
    _, start = env.reset(options={"split": "train", "task": 0})
    opposite = {"north": "south", "south": "north", "east": "west", "west": "east"}
    move = next(m for m in opposite if (nxt := env.level.move(env.state, m)) is not None and nxt[1] == env.state[1])
    _, _, _, _, away = env.step(move)
    _, _, _, _, back = env.step(opposite[move])
    assert away["state_key"] != start["state_key"]
    assert back["state_key"] == start["state_key"]


def test_splits_are_disjoint_and_tasks_are_pure():
    a, b = Sokoban(), Sokoban()
    train = {a.task_key("train", k) for k in range(200)}
    test = {a.task_key("test", k) for k in range(50)}
    assert not train & test
    assert b.task_key("test", 3) == a.task_key("test", 3)


def test_bad_knobs_are_named():
    with pytest.raises(ValueError, match="num_boxes"):
        Sokoban(size=5, num_boxes=9)
    with pytest.raises(ValueError, match="size"):
        Sokoban(size=3)
