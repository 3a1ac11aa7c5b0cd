"""Puzzle and game envs: guess-the-number, maze, Sokoban, Wordle, twenty questions."""

from envgym.registration import register

register("games/GuessNumber-v0", "envgym.envs.games.guess:GuessNumber", max_turns=10,
         description="Guess a secret integer in [1, 100] from higher/lower feedback; the answer is known.")
register("games/Maze-v0", "envgym.envs.games.maze:Maze", max_turns=20,
         description="Walk a 5x5 grid maze with dead ends and loops to the goal; full map shown.")
register("games/Sokoban-v0", "envgym.envs.games.sokoban:Sokoban", max_turns=50,
         description="Push one box onto its goal in a 6x6 Sokoban room (generated, solvable, >= 5 moves).")
register("games/Wordle-v0", "envgym.envs.games.wordle:Wordle", max_turns=12,
         description="Find a hidden five-letter word in 6 guesses from G/Y/_ feedback; the answer is known.")
register("games/TwentyQuestions-v0", "envgym.envs.games.questions:TwentyQuestions",
         description="Find a hidden item (4 attributes, 3 values each) with yes/no questions in 9 turns; "
                     "the answer is known and compositional, train and test items disjoint.")
