"""The built-in env families. `register()` registers their ids (no heavy imports); envgym's registry calls it
through the `envgym.envs` entry point, as it calls every plugin's (see pyproject.toml)."""


def register() -> None:
    """Register the built-in families and the adapter prefixes (importing them registers them, once)."""
    from envgym.envs import adapters, games, textworld, toytext  # noqa: F401
    from envgym.envs import tools as _tool_envs  # noqa: F401

