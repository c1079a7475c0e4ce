"""Out-of-tree platform plugins win over vLLM's device detection, on every release we test."""


def cpu_platform() -> str:
    return "vllm.platforms.cpu.CpuPlatform"
