"""Package list for the namespaced layout: envs/, trainers/, tools/, containers/ install as envgym.envs,
envgym.trainers, envgym.tools, envgym.containers."""
from setuptools import find_packages, setup

packages = ["envgym"] + [f"envgym.{p}" for p in find_packages("envgym")]
for top in ("envs", "trainers", "tools", "containers"):
    packages += [f"envgym.{top}"] + [f"envgym.{top}.{p}" for p in find_packages(top)]
setup(packages=packages)
