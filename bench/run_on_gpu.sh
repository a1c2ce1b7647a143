#!/usr/bin/env bash
# The CUDA checks and GPU benchmarks, as one script for a lent GPU machine (device tool; see
# docs/benchmarks.md). That machine's python3 already has CUDA PyTorch, numpy, scikit-learn,
# msgpack, requests, rich and pytest but no network: what its image lacks travels as wheels in
# .whl/ (cryptography, cffi, pycparser, redis; docs/benchmarks.md has the download command).
# Results go to $OUT (the device tool brings them back), or ./gpu-results elsewhere.
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
{ nvidia-smi; python3 -c "import sys, torch; print(sys.version); print('torch', torch.__version__, torch.cuda.get_device_name(0))"; } 2>&1 | tee "$OUT/card.txt"
# Peer-side tests only (no Django, no services there): --noconftest keeps the platform's fixtures out.
timeout 180 python3 -m pytest -q -p no:cacheprovider --noconftest -o addopts="-ra" \
  tests/test_cuda_path.py tests/test_models_training.py tests/test_hw.py 2>&1 | tee "$OUT/tests.txt"
# BENCHES: which benchmarks, ';'-separated (default: train; aggregate; accuracy --quick; none: no CUDA bench)
IFS=';' read -ra benches <<< "${BENCHES:-train;aggregate;accuracy --quick}"
for bench in "${benches[@]}"; do
  [ "$bench" = none ] && continue
  echo "== python -m bench $bench --device cuda"
  timeout 120 python3 -m bench $bench --device cuda
done 2>&1 | tee "$OUT/bench_cuda.txt"
# CPU_BENCHES: benchmarks that use the machine's CPU cores instead (';'-separated, none by default),
# e.g. "robustness --rounds 100 --local-steps 20 --workers 16": the issue's full grid, a process a run.
IFS=';' read -ra cpu_benches <<< "${CPU_BENCHES:-}"
for bench in "${cpu_benches[@]}"; do
  echo "== python -m bench $bench (nproc $(nproc))"
  timeout "${CPU_BENCH_TIMEOUT:-420}" python3 -m bench $bench
done > "$OUT/bench_cpu.txt" 2> "$OUT/bench_cpu.log"
tail -c 3000 "$OUT/bench_cpu.txt"
