"""A small grid maze with walls, dead ends and a few loops.

Each task is a maze carved by a randomised depth-first search from the task's
seed, with some extra walls knocked out so that different routes can reach the
same cell (anchor states recur). The agent moves one cell per turn; walking
into a wall is an invalid action that costs a turn. With ``view="map"`` it sees
the whole map; with ``view="local"`` it sees only what it could see standing in
its cell: the open directions and the bearing of the goal (a partially observed
maze, where dead ends must be learned from experience rather than read).
"""

from __future__ import annotations

import string
from collections import deque
from typing import Any

import numpy as np

from envgym.core import Env, draw_task

MOVES = {"north": (-1, 0), "south": (1, 0), "west": (0, -1), "east": (0, 1)}
MOVE_ALIASES = {"up": "north", "down": "south", "left": "west", "right": "east", "n": "north", "s": "south",
            "w": "west", "e": "east"}


def parse_move(action: str) -> str | None:
    """The compass direction an action names ("North.", ". north", "up", "e"), or None if it names none."""
    word = action.strip(string.whitespace + ".!'\"").lower()  # a tiny model's tokens decode as ". north"
    move = MOVE_ALIASES.get(word, word)
    return move if move in MOVES else None


def unknown_move(action: str) -> str:
    """The feedback for an action that names no direction."""
    return f"Unknown move {action[:40]!r}. Reply with north, south, east or west."


def carve_maze(size: int, loops: float, rng: np.random.Generator) -> np.ndarray:
    """A (2*size+1)^2 char grid of '#' walls and '.' floor: a DFS maze plus `loops` of the remaining walls removed."""
    grid = np.full((2 * size + 1, 2 * size + 1), "#")
    seen = np.zeros((size, size), dtype=bool)
    stack = [(0, 0)]
    seen[0, 0] = True
    grid[1, 1] = "."
    while stack:
        r, c = stack[-1]
        options = [(dr, dc) for dr, dc in MOVES.values()
                   if 0 <= r + dr < size and 0 <= c + dc < size and not seen[r + dr, c + dc]]
        if not options:
            stack.pop()
            continue
        dr, dc = options[rng.integers(len(options))]
        grid[2 * r + 1 + dr, 2 * c + 1 + dc] = "."
        grid[2 * (r + dr) + 1, 2 * (c + dc) + 1] = "."
        seen[r + dr, c + dc] = True
        stack.append((r + dr, c + dc))
    inner = [(i, j) for i in range(1, 2 * size) for j in range(1, 2 * size)
             if grid[i, j] == "#" and (i % 2) != (j % 2)]
    for k in rng.permutation(len(inner))[: int(loops * len(inner))]:
        grid[inner[k]] = "."
    return grid


def shortest_path_moves(grid: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> list[str]:
    """The moves of one shortest path from `start` to `goal` (cell coordinates), by breadth-first search."""
    size = grid.shape[0] // 2
    parent: dict[tuple[int, int], tuple[tuple[int, int], str] | None] = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            break
        for name, (dr, dc) in MOVES.items():
            nxt = (cell[0] + dr, cell[1] + dc)
            if (0 <= nxt[0] < size and 0 <= nxt[1] < size and nxt not in parent
                    and grid[2 * cell[0] + 1 + dr, 2 * cell[1] + 1 + dc] == "."):
                parent[nxt] = (cell, name)
                queue.append(nxt)
    moves: list[str] = []
    cell = goal
    while parent[cell] is not None:
        cell, name = parent[cell]
        moves.append(name)
    return moves[::-1]


class Maze(Env):
    episode_state = ("position",)  # fork copies these (see Env.fork)
    knobs = {
        "size": "cells per side (default 5); the shortest path grows with it",
        "loops": "fraction of inner walls removed after carving (default 0.1); more loops, more routes",
        "min_distance": "least number of moves from start to goal (default size)",
        "view": "'map' (default): the whole map; 'local': only the open directions and the goal's bearing",
    }
    action_format = "one direction: north, south, east or west"

    def __init__(self, size: int = 5, loops: float = 0.1, min_distance: int | None = None, view: str = "map"):
        if view not in ("map", "local"):
            raise ValueError(f"view must be 'map' or 'local', got {view!r}")
        if size < 2:
            raise ValueError(f"size must be >= 2, got {size}")
        if not 0.0 <= loops <= 1.0:
            raise ValueError(f"loops must be in [0, 1], got {loops}")
        self.size, self.loops = int(size), float(loops)
        self.min_distance = self.size if min_distance is None else int(min_distance)
        self.view = view
        self.num_tasks = {"train": 100_000, "test": 1_000}
        seen = ("drawn as a map: '#' is a wall, '.' is floor, 'A' is you and 'G' is the goal" if view == "map" else
                "but you only see the exits of your cell and how many cells away the goal is in each direction")
        self.instructions = (
            f"You are in a {self.size}x{self.size} maze, {seen}. Reach the goal. Each turn, move one cell by "
            "replying with one direction: north (up), south (down), east (right) or west (left)."
        )
        self._cache: dict[tuple[str, int], tuple[np.ndarray, tuple[int, int], tuple[int, int]]] = {}

    def _task(self, split: str, index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Task `index` of `split`: (grid, start, goal). Draws layouts until one falls in `split`."""
        key = (split, index)
        if key not in self._cache:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = draw_task(f"maze-{self.size}-{self.loops}", split, index, self._layout,
                                         lambda task: self._content_key(*task),
                                         accept=lambda task: len(shortest_path_moves(*task)) >= self.min_distance)
        return self._cache[key]

    def _layout(self, seed: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """A maze carved from `seed`, with a start and a goal cell."""
        rng = np.random.default_rng(seed)
        grid = carve_maze(self.size, self.loops, rng)
        cells = [(r, c) for r in range(self.size) for c in range(self.size)]
        start, goal = (cells[i] for i in rng.choice(len(cells), size=2, replace=False))
        return grid, start, goal

    @staticmethod
    def _content_key(grid: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> str:
        return f"maze|{''.join(grid.ravel())}|{start}|{goal}"

    def task_key(self, split: str, index: int) -> str:
        return self._content_key(*self._task(split, index))

    def _open_moves(self) -> list[str]:
        r, c = self.position
        return [name for name, (dr, dc) in MOVES.items() if self.grid[2 * r + 1 + dr, 2 * c + 1 + dc] == "."]

    def _render(self) -> str:
        """What the agent sees: the whole map, or (view "local") e.g. "Goal: 1 south, 2 east. Exits: north, east"."""
        if self.view == "local":
            rows, cols = self.goal[0] - self.position[0], self.goal[1] - self.position[1]
            bearing = [f"{abs(d)} {name}" for d, name in ((rows, "south" if rows > 0 else "north"),
                                                           (cols, "east" if cols > 0 else "west")) if d]
            return f"Goal: {', '.join(bearing) or 'here'}. Exits: {', '.join(self._open_moves())}"
        picture = self.grid.copy()
        picture[2 * self.goal[0] + 1, 2 * self.goal[1] + 1] = "G"
        picture[2 * self.position[0] + 1, 2 * self.position[1] + 1] = "A"
        return "\n".join("".join(row) for row in picture)

    def _info(self, **extra: Any) -> dict[str, Any]:
        return {"state_key": f"{self.position[0]},{self.position[1]}", "admissible_actions": self._open_moves(),
                "won": self.position == self.goal, **extra}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        split, task = self.select_task(seed, options)
        self.grid, self.position, self.goal = self._task(split, task)
        return self._render(), self._info()

    def step(self, action: str):
        action = self.check_action(action)
        move = parse_move(action)
        if move is None:
            obs = f"{unknown_move(action)}\n{self._render()}"
            return obs, 0.0, False, False, self._info(invalid_action=True)
        if move not in self._open_moves():
            return f"You bump into a wall going {move}.\n{self._render()}", 0.0, False, False, \
                self._info(invalid_action=True)
        dr, dc = MOVES[move]
        self.position = (self.position[0] + dr, self.position[1] + dc)
        if self.position == self.goal:
            return f"You reach the goal!\n{self._render()}", 1.0, True, False, self._info(invalid_action=False)
        return self._render(), 0.0, False, False, self._info(invalid_action=False)

    def oracle_action(self) -> str:
        return shortest_path_moves(self.grid, self.position, self.goal)[0]
