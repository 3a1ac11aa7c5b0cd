"""Adapter prefixes: envs of other packages reached as ``PREFIX:NAME`` ids (see `envgym.register_prefix`).

Registering a prefix imports nothing: each adapter module, and the package it
adapts (an optional extra), is imported when an env of its prefix is made.
"""

from envgym.registration import register_prefix

register_prefix("reasoning_gym", "envgym.envs.adapters.reasoning_gym:ReasoningGymEnv", argument="dataset",
                source="reasoning-gym procedural datasets", extra="reasoning-gym", requires=("reasoning_gym",),
                description="A reasoning-gym task: the question, then one answer (more with attempts=N).",
                example="reasoning_gym:leg_counting")
register_prefix("gem", "envgym.envs.adapters.gem:GemEnv", argument="env_id", source="GEM (gem-llm) games",
                extra="gem", requires=("gem",), description="A game of GEM's registry, seeded per task.",
                example="gem:game:Sudoku-v0-easy")
register_prefix("textarena", "envgym.envs.adapters.textarena:TextArenaEnv", argument="env_id",
                source="TextArena single-player games", extra="textarena", requires=("textarena",),
                description="A single-player game of TextArena's registry, seeded per task.",
                example="textarena:GuessTheNumber-v0")
register_prefix("openenv", "envgym.remote:make_openenv_env", argument="url",
                source="OpenEnv servers (envgym serve, ...)",
                extra="openenv", requires=("websockets",),
                description="An env served over OpenEnv, played over one WebSocket (option: timeout, seconds).",
                example="openenv:http://127.0.0.1:8000")
