"""TextWorld games (the `textworld` extra): registration only; nothing here imports textworld."""

from envgym.registration import register

_ENV = "envgym.envs.textworld.env"
_STEP = 0.002  # seconds of a game engine step (1-3 ms, benchmarks/rollout.py): EnvPool "auto" uses workers
register("textworld/CoinCollector-v0", f"{_ENV}:CoinCollector", max_turns=25, step_seconds=_STEP,
         description="TextWorld Coin Collector (level 3): find the coin along a chain of rooms.")
register("textworld/TreasureHunter-v0", f"{_ENV}:TreasureHunter", max_turns=30, step_seconds=_STEP,
         description="TextWorld Treasure Hunter (level 1): find and take the named object in a 5-room house.")
register("textworld/Cooking-v0", f"{_ENV}:Cooking", max_turns=50, step_seconds=_STEP,
         description="TextWorld Cooking (1 ingredient to find, 1 room): follow the recipe and eat the meal.")
register("textworld/Simple-v0", f"{_ENV}:Simple", max_turns=50, step_seconds=_STEP,
         description="TextWorld Simple (dense rewards, detailed goal): a short house quest.")
register("textworld/Custom-v0", f"{_ENV}:Custom", max_turns=50, step_seconds=_STEP,
         description="A TextWorld game from make_game: 3 rooms, 5 objects, quest length 3 (all knobs).")
