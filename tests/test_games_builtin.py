"""The two built-in games: rules, rewards, state keys and their oracles."""

import pytest

import envgym


def run_oracle(env, seed, options):
    obs, info = env.reset(seed=seed, options=options)
    total, turns = 0.0, 0
    while True:
        obs, reward, terminated, truncated, info = env.step(env.unwrapped.oracle_action())
        total, turns = total + reward, turns + 1
        if terminated or truncated:
            return info["won"], total, turns


@pytest.mark.parametrize("env_id", ["games/GuessNumber-v0", "games/Maze-v0"])
def test_oracle_wins_every_test_task(env_id):
    env = envgym.make(env_id)
    n = min(env.unwrapped.num_tasks["test"], 40)
    results = [run_oracle(env, 0, {"split": "test", "task": k}) for k in range(n)]
    assert all(won for won, _, _ in results)
    assert all(total == 1.0 for _, total, _ in results)


def test_guess_feedback_and_interval_state_key():
    env = envgym.make("games/GuessNumber-v0")
    obs, info = env.reset(seed=0, options={"split": "train", "task": 5})
    secret = int(info["answer"])
    assert info["state_key"] == "1-100"
    low_guess = secret - 1
    obs, reward, terminated, _, info = env.step(f"My guess is {low_guess}")
    assert "higher" in obs and reward == 0.0 and not terminated
    assert info["state_key"] == f"{low_guess + 1}-100"
    obs, reward, terminated, _, info = env.step("150")
    assert info["invalid_action"] and "out of range" in obs
    obs, reward, terminated, _, info = env.step(str(secret))
    assert reward == 1.0 and terminated and info["won"]


def test_guess_state_key_is_the_same_for_two_guess_orders():
    env = envgym.make("games/GuessNumber-v0")
    task = next(k for k in range(81) if 30 < int(env.reset(options={"split": "train", "task": k})[1]["answer"]) < 80)
    keys = []
    for order in (["30", "80"], ["80", "30"]):
        env.reset(seed=0, options={"split": "train", "task": task})
        for g in order:
            *_, info = env.step(g)
        keys.append(info["state_key"])
    assert keys[0] == keys[1] == "31-79"


def test_maze_walls_block_and_moves_are_flagged():
    env = envgym.make("games/Maze-v0")
    obs, info = env.reset(seed=0, options={"split": "test", "task": 0})
    blocked = next(m for m in ("north", "south", "east", "west") if m not in info["admissible_actions"])
    before = info["state_key"]
    obs, reward, _, _, info = env.step(blocked)
    assert info["invalid_action"] and "wall" in obs and info["state_key"] == before
    obs, _, _, _, info = env.step("jump")
    assert info["invalid_action"] and "Unknown move" in obs
    obs, _, _, _, info = env.step("  " + info["admissible_actions"][0].upper() + ". ")
    assert not info["invalid_action"] and info["state_key"] != before


def test_maze_knobs_change_the_layout_and_the_observation_shows_the_map():
    small = envgym.make("games/Maze-v0", size=3)
    obs, _ = small.reset(seed=0, options={"split": "test", "task": 0})
    assert obs.count("\n") == 6 and "A" in obs and "G" in obs
    with pytest.raises(ValueError, match="loops must be in"):
        envgym.make("games/Maze-v0", loops=2.0)


def test_maze_local_view_shows_exits_and_the_goal_bearing_not_the_map():
    full = envgym.make("games/Maze-v0", size=4, loops=0.5)
    local = envgym.make("games/Maze-v0", size=4, loops=0.5, view="local")
    for task in range(20):  # same task, same layout, two views
        _, info = full.reset(options={"split": "test", "task": task})
        obs, local_info = local.reset(options={"split": "test", "task": task})
        assert local_info["state_key"] == info["state_key"] and "#" not in obs
        maze = local.unwrapped
        rows, cols = maze.goal[0] - maze.position[0], maze.goal[1] - maze.position[1]
        bearing = obs.split(". Exits: ")[0]
        assert (f"{abs(rows)} {'south' if rows > 0 else 'north'}" in bearing) == (rows != 0)
        assert (f"{abs(cols)} {'east' if cols > 0 else 'west'}" in bearing) == (cols != 0)
        assert obs.split(". Exits: ")[1].split(", ") == info["admissible_actions"]
    assert "only see the exits" in maze.instructions
    with pytest.raises(ValueError, match="view must be 'map' or 'local'"):
        envgym.make("games/Maze-v0", view="top-down")


def test_maze_local_view_passes_the_checker():
    from envgym.checker import check_env

    report = check_env("games/Maze-v0", size=4, view="local")
    assert report.ok, report.render()


@pytest.mark.parametrize("action", ["north", " North. ", ". north", "north .", "'n'", "\tup!\r\n"])
def test_a_move_may_be_wrapped_in_spaces_and_punctuation(action):
    from envgym.envs.games.maze import parse_move

    assert parse_move(action) == "north"
    assert parse_move(action + "x") is None
