"""The built-in env families. Importing this package registers their ids (no heavy imports)."""

from envgym.envs import games  # noqa: F401
from envgym.envs import tools as _tool_envs  # noqa: F401
from envgym.envs import textworld, toytext  # noqa: F401
from envgym.envs import adapters  # noqa: F401
