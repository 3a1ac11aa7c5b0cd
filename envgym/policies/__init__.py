"""Policies behind two protocols: `TokenPolicy` (hf, vllm) and `TextPolicy` (scripted, random, openai).

    policy = load_policy("hf:default")          # the embedded SmolLM2-135M-Instruct
    policy = load_policy("hf:/path/to/checkpoint")
    policy = load_policy("hf:Qwen/Qwen2.5-0.5B-Instruct")  # a hub id: the local Hugging Face cache, else downloaded
    policy = load_policy("vllm:/path/to/checkpoint")   # a vLLM engine (GPU, or the CPU wheel in .venv-vllm)
    policy = load_policy("openai:http://127.0.0.1:8000/v1#my-model")
    policy = load_policy("scripted")            # the env's oracle
    policy = load_policy("random")              # a random legal move (see RandomPolicy)
"""

from __future__ import annotations

from typing import Any

from envgym.policies.base import (CachingTokenPolicy, Completion, ContextOverflow, Message, Policy, PolicyError,
                                  SamplingParams, TextPolicy, TextReply, TextRequest, TokenPolicy)
from envgym.policies.baselines import RandomPolicy, ScriptedPolicy
from envgym.policies.hf import HFPolicy

__all__ = ["POLICY_SPECS", "CachingTokenPolicy", "Completion", "ContextOverflow", "HFPolicy", "Message", "Policy",
           "PolicyError", "RandomPolicy", "SamplingParams", "ScriptedPolicy", "TextPolicy", "TextReply", "TextRequest",
           "TokenPolicy", "load_policy"]

POLICY_SPECS = ("hf:PATH", "hf:default", "hf:ORG/NAME", "vllm:PATH", "openai:URL#MODEL", "scripted", "random")


def load_policy(spec: str, **kwargs: Any) -> Policy:
    """Build the policy a spec string names (see POLICY_SPECS); `kwargs` go to its constructor."""
    kind, _, target = spec.partition(":")
    if kind == "scripted" and not target:
        return ScriptedPolicy(**kwargs)
    if kind == "random" and not target:
        return RandomPolicy(**kwargs)
    if kind == "hf" and target:
        return HFPolicy.from_pretrained(target, **kwargs)
    if kind == "vllm" and target:
        from envgym.policies.vllm import VLLMPolicy

        return VLLMPolicy.from_pretrained(target, **kwargs)
    if kind == "openai" and target:
        from envgym.policies.openai_chat import OpenAIChatPolicy

        return OpenAIChatPolicy.from_spec(target, **kwargs)
    raise ValueError(f"unknown policy spec {spec!r}; expected one of {', '.join(POLICY_SPECS)}")
