#!/usr/bin/env bash
# Issue 20's CPU comparison, for a QUIET machine (load average < 1): about 30-40 minutes on the
# 2-core VM. Usage (from the repository root, venv active):
#   bash benchmarks/cpu_speed_quiet.sh [OUT_DIR]
# Writes OUT_DIR/*.json and *.md and prints the tables; docs/bench_cpu_speed.md says what each
# step measures and how to read it.
set -euo pipefail
out="${1:-cpu_speed_$(date +%Y%m%d_%H%M)}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
load() { echo "$(date -Is) load average: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/load.txt"; }
load
# 1. The yardstick: training step and inference, JAX vs PyTorch eager and torch.compile.
python -m dcfnet_jax.bench --batch-size 32 --steps 5 --warmup 2 \
  --frameworks jax,torch,torch-compile --json "$out/bench_b32.json" | tee "$out/bench_b32.md"
load
# 2. The same comparison interleaved round by round in one process (robust to load drifting
#    during the run), with the inference variants (jax = what the predictor runs: no CPU
#    gradient formulations, BatchNorm not folded; jax-fold = folded; jax-fast-infer = the raw
#    model with its CPU formulations, the inference before issue 20).
python benchmarks/bench_cpu_ab.py --mode train --batch 32 --rounds 5 \
  --variants jax,torch,torch-compile --reference torch \
  --json "$out/ab_train.json" | tee "$out/ab_train.md"
load
python benchmarks/bench_cpu_ab.py --mode infer --batch 32 --rounds 7 \
  --variants jax,jax-fold,jax-fast-infer,torch,torch-compile --reference torch \
  --json "$out/ab_infer.json" | tee "$out/ab_infer.md"
load
# 3. Whole-scene sharpening, PAN Mpixel/s, JAX vs the PyTorch reference (same tiles).
python benchmarks/bench_pansharpen.py --size 1024 --bands 8 --json "$out/pansharpen_1024.json" \
  | tee "$out/pansharpen_1024.md"
load
