"""TextWorld games (the `textworld` extra): registration only; nothing here imports textworld."""

from envgym.envs.textworld.env import LEVELLED_CHALLENGES
from envgym.registration import register

_ENV = "envgym.envs.textworld.env"
_STEP = 0.002  # seconds of a game engine step (1-3 ms, benchmarks/rollout.py): EnvPool "auto" uses workers
for _challenge in LEVELLED_CHALLENGES.values():
    register(f"textworld/{_challenge.name}-v0", f"{_ENV}:{_challenge.name}", max_turns=_challenge.max_turns,
             step_seconds=_STEP, description=_challenge.description)
register("textworld/Cooking-v0", f"{_ENV}:Cooking", max_turns=50, step_seconds=_STEP,
         description="TextWorld Cooking (1 ingredient to find, 1 room): follow the recipe and eat the meal.")
register("textworld/Simple-v0", f"{_ENV}:Simple", max_turns=50, step_seconds=_STEP,
         description="TextWorld Simple (dense rewards, detailed goal): a short house quest.")
register("textworld/Custom-v0", f"{_ENV}:Custom", max_turns=50, step_seconds=_STEP,
         description="A TextWorld game from make_game: 3 rooms, 5 objects, quest length 3 (all knobs).")
