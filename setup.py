"""Package list for the namespaced layout: envs/, trainers/, tools/ install as envgym.envs, envgym.trainers, envgym.tools."""
from setuptools import find_packages, setup

packages = ["envgym"] + [f"envgym.{p}" for p in find_packages("envgym")]
for top in ("envs", "trainers", "tools"):
    packages += [f"envgym.{top}"] + [f"envgym.{top}.{p}" for p in find_packages(top)]
setup(packages=packages)
