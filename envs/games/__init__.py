"""Puzzle and game envs: guess-the-number, maze (and more families as they land)."""

from envgym.registration import register

register("games/GuessNumber-v0", "envgym.envs.games.guess:GuessNumber", max_turns=10,
         description="Guess a secret integer in [1, 100] from higher/lower feedback; the answer is known.")
register("games/Maze-v0", "envgym.envs.games.maze:Maze", max_turns=20,
         description="Walk a 5x5 grid maze with dead ends and loops to the goal; full map shown.")
