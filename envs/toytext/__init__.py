"""Gymnasium's toy-text games through one text adapter (see `adapter.ToyText`). Registration imports nothing heavy."""

from envgym.registration import register

register("toytext/FrozenLake-v0", "envgym.envs.toytext.games:FrozenLake", max_turns=30,
         description="Cross a generated 4x4 frozen lake without falling in a hole (not slippery by default).")
register("toytext/Taxi-v0", "envgym.envs.toytext.games:Taxi", max_turns=50,
         description="Pick up a passenger and drop them at their destination on Gymnasium's 5x5 Taxi map.")
register("toytext/CliffWalking-v0", "envgym.envs.toytext.games:CliffWalking", max_turns=50,
         description="Walk to the goal along a cliff on a 4x12 grid, from a different start cell per task.")
register("toytext/Blackjack-v0", "envgym.envs.toytext.games:Blackjack", max_turns=10,
         description="One hand of blackjack against the dealer (Gymnasium's rules); stochastic, no sure win.")
