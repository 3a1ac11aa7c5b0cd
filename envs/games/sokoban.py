"""Sokoban: push every box onto a goal in a small walled room.

Levels are generated the way gym-sokoban does it: carve a room by a random walk,
put the boxes on their goals, then play backwards (the player pulls boxes) from
that solved state. Every level that comes out is solvable by construction; a
breadth-first solver then finds its shortest solution, and levels solved in
fewer than `min_moves` moves are drawn again. The same solver is the oracle.

The map uses the standard XSB notation: ``#`` wall, ``_`` floor (``' '`` in XSB,
changed so that tokenizers see it), ``.`` goal, ``$`` box, ``*`` box on a goal,
``@`` the player, ``+`` the player on a goal. A move into a wall, or a push
against a wall or a second box, is refused (invalid action, nothing changes).
Rewards: +0.1 for a box pushed onto a goal, -0.1 for one pushed off, +1 on solving.
Pushing a box into a corner can make a level unsolvable; the episode then runs
on until the turn limit.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from envgym.core import Env, draw_task
from envgym.envs.games.maze import MOVES, parse_move, unknown_move

State = tuple[int, tuple[int, ...]]  # (player cell, sorted box cells); cells are flat indices r * width + c


class Level:
    """A room (walls and goals, fixed) with the start state; cells are flat indices."""

    def __init__(self, size: int, walls: frozenset[int], goals: frozenset[int], start: State):
        self.size, self.walls, self.goals, self.start = size, walls, goals, start
        self.steps = {name: dr * size + dc for name, (dr, dc) in MOVES.items()}
        self._background = ["#" if i in walls else "." if i in goals else "_" for i in range(size * size)]
        # A box on a non-goal cell with walls on two orthogonal sides can never move again.
        self.dead = frozenset(
            i for i in range(size * size)
            if i not in walls and i not in goals
            and ((i - size in walls or i + size in walls) and (i - 1 in walls or i + 1 in walls))
        )

    def move(self, state: State, name: str) -> State | None:
        """The state after moving `name` (pushing a box if one is there), or None when blocked."""
        player, boxes = state
        step = self.steps[name]
        target = player + step
        if target in self.walls:
            return None
        if target in boxes:
            beyond = target + step
            if beyond in self.walls or beyond in boxes:
                return None
            boxes = tuple(sorted(beyond if b == target else b for b in boxes))
        return target, boxes

    def solved(self, state: State) -> bool:
        return all(b in self.goals for b in state[1])

    def solve(self, state: State, max_states: int = 200_000) -> list[str] | None:
        """A shortest list of moves from `state` to a solved state (breadth-first), or None.

        None when no solution exists or more than `max_states` states would be searched.
        """
        parent: dict[State, tuple[State, str] | None] = {state: None}
        queue = deque([state])
        while queue:
            current = queue.popleft()
            if self.solved(current):
                moves: list[str] = []
                while parent[current] is not None:
                    current, name = parent[current]
                    moves.append(name)
                return moves[::-1]
            for name in self.steps:
                nxt = self.move(current, name)
                if nxt is None or nxt in parent or any(b in self.dead for b in nxt[1]):
                    continue
                parent[nxt] = (current, name)
                if len(parent) > max_states:
                    return None
                queue.append(nxt)
        return None

    def render(self, state: State) -> str:
        cells = self._background.copy()
        for b in state[1]:
            cells[b] = "*" if b in self.goals else "$"
        player = state[0]
        cells[player] = "+" if player in self.goals else "@"
        n = self.size
        return "\n".join("".join(cells[r * n:(r + 1) * n]) for r in range(n))

    def content_key(self) -> str:
        return f"sokoban|{self.render(self.start)}"


def generate_level(size: int, num_boxes: int, rng: np.random.Generator) -> Level | None:
    """A room carved by a random walk with boxes pulled away from their goals; None if the room is too small."""
    floor = {(int(rng.integers(1, size - 1)), int(rng.integers(1, size - 1)))}
    r, c = next(iter(floor))
    directions = list(MOVES.values())
    for _ in range(3 * (size - 2) ** 2):
        dr, dc = directions[rng.integers(4)]
        if 1 <= r + dr < size - 1 and 1 <= c + dc < size - 1:
            r, c = r + dr, c + dc
            floor.add((r, c))
    if len(floor) < 2 * num_boxes + 2:
        return None
    cells = sorted(rr * size + cc for rr, cc in floor)
    walls = frozenset(range(size * size)) - frozenset(cells)
    chosen = rng.choice(len(cells), size=num_boxes + 1, replace=False)
    goals = frozenset(cells[i] for i in chosen[:num_boxes])
    player, boxes = cells[chosen[-1]], set(goals)
    steps = [dr * size + dc for dr, dc in directions]
    for _ in range(10 * len(cells)):  # reverse play: walk, pulling the box behind you half the time
        step = steps[rng.integers(4)]
        target = player + step
        if target in walls or target in boxes:
            continue
        behind = player - step
        if behind in boxes and rng.random() < 0.5:
            boxes.remove(behind)
            boxes.add(player)
        player = target
    return Level(size, walls, goals, (player, tuple(sorted(boxes))))


class Sokoban(Env):
    episode_state = ("state", "_plan")  # fork copies these (see Env.fork)
    knobs = {
        "size": "side of the square map, border walls included (default 6: a 4x4 interior)",
        "num_boxes": "boxes to push onto goals (default 1); each adds pushes and deadlock risk",
        "min_moves": "least number of moves of the shortest solution (default 5)",
    }
    action_format = "one direction: north (up), south (down), east (right) or west (left)"

    def __init__(self, size: int = 6, num_boxes: int = 1, min_moves: int = 5):
        if size < 4:
            raise ValueError(f"size must be >= 4 (a 2x2 interior), got {size}")
        if not 1 <= num_boxes <= (size - 2) ** 2 // 3:
            raise ValueError(f"num_boxes must be in [1, {(size - 2) ** 2 // 3}] for size {size}, got {num_boxes}")
        if min_moves < 1:
            raise ValueError(f"min_moves must be >= 1, got {min_moves}")
        self.size, self.num_boxes, self.min_moves = int(size), int(num_boxes), int(min_moves)
        self.num_tasks = {"train": 100_000, "test": 1_000}
        self.instructions = (
            f"You play Sokoban on a {self.size}x{self.size} map: '#' is a wall, '_' is floor, '.' is a goal, "
            "'$' is a box, '*' is a box on a goal, '@' is you and '+' is you standing on a goal. "
            "Push every box onto a goal. You push a box by walking into it; you cannot pull boxes "
            "or push two at once, and a box pushed into a corner is stuck for good. Each turn, reply "
            "with one direction: north (up), south (down), east (right) or west (left)."
        )
        self._cache: dict[tuple[str, int], Level] = {}
        self._plan: dict[State, str] = {}

    def _task(self, split: str, index: int) -> Level:
        """Task `index` of `split`: a generated level in `split` that is worth playing."""
        key = (split, index)
        if key not in self._cache:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = draw_task(
                f"sokoban-{self.size}-{self.num_boxes}-{self.min_moves}", split, index,
                lambda seed: generate_level(self.size, self.num_boxes, np.random.default_rng(seed)),
                Level.content_key, accept=self._worth_playing)
        return self._cache[key]

    def _worth_playing(self, level: Level) -> bool:
        """No box starts on a goal, and the shortest solution takes at least `min_moves` moves."""
        if any(box in level.goals for box in level.start[1]):
            return False
        solution = level.solve(level.start)
        return solution is not None and len(solution) >= self.min_moves

    def task_key(self, split: str, index: int) -> str:
        return self._task(split, index).content_key()

    def _info(self, **extra: Any) -> dict[str, Any]:
        player, boxes = self.state
        return {"state_key": f"{player}|{','.join(map(str, boxes))}", "won": self.level.solved(self.state), **extra}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        split, task = self.select_task(seed, options)
        self.level = self._task(split, task)
        self.state = self.level.start
        self._plan = {}
        return self.level.render(self.state), self._info()

    def step(self, action: str):
        action = self.check_action(action)
        move = parse_move(action)
        if move is None:
            obs = f"{unknown_move(action)}\n{self.level.render(self.state)}"
            return obs, 0.0, False, False, self._info(invalid_action=True)
        nxt = self.level.move(self.state, move)
        if nxt is None:
            obs = f"You cannot move {move}: a wall or a blocked box is in the way.\n{self.level.render(self.state)}"
            return obs, 0.0, False, False, self._info(invalid_action=True)
        goals = self.level.goals
        reward = 0.1 * (sum(b in goals for b in nxt[1]) - sum(b in goals for b in self.state[1]))
        self.state = nxt
        if self.level.solved(nxt):
            return f"{self.level.render(nxt)}\nAll boxes are on goals!", reward + 1.0, True, False, \
                self._info(invalid_action=False)
        return self.level.render(nxt), reward, False, False, self._info(invalid_action=False)

    def sample_action(self, rng: np.random.Generator) -> str:
        """One of the moves that are not blocked, uniformly (a box may still be pushed into a corner)."""
        moves = [m for m in MOVES if self.level.move(self.state, m) is not None] or list(MOVES)
        return moves[int(rng.integers(len(moves)))]

    def oracle_action(self) -> str:
        """The next move of a shortest solution; from a dead end (no solution), any move that is not blocked."""
        if self.state not in self._plan:
            moves = self.level.solve(self.state)
            if moves is None:
                return next(m for m in MOVES if self.level.move(self.state, m) is not None)
            state, self._plan = self.state, {}
            for move in moves:
                self._plan[state] = move
                state = self.level.move(state, move)
        return self._plan[self.state]
