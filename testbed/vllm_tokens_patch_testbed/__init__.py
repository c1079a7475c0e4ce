"""Test-only package (`pip install ./testbed`, done by the nox sessions that need it): what the tests, the
demo and the benchmarks run on. Importing it imports nothing; each module imports what it needs.

- `harness`: vLLM's real app (this release's arg parser, config, `build_app`, `init_app_state`) with a
  fake engine that records the prompt it is fed
- `serve`: a real `vllm serve` subprocess (for the tiny offline model of `vllm_tokens_patch.tiny_model`)
- `doctor_cli`, `vllm_errors`: the doctor's report in a fresh interpreter; vLLM's error format
- `vllm_suite`, `e2e_suite`: what the conftest and the test modules of tests/vllm and tests/e2e share
- `images`: image content parts and placeholder runs, for the image tests of both
- `family_templates`, `splice_driver`: our chat-template families and the splice driver of tests/families
"""
