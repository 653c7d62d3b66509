#!/usr/bin/env bash
# Issue 14's GPU rows in one device call, from the repository root with a CUDA jax installed:
#   bash benchmarks/gpu_issue14.sh 2>&1 | grep -v '^[IW][0-9]'
# Expected ~8 minutes on one H100 (not yet run on a GPU: each command was checked on a CPU with small settings).
# Every command prints the device; the figures go in benchmarks/README.md, "GPU goals of issue 14".
set -euo pipefail
# Mixed precision: the CelebA step in float32 (TF32 where XLA allows it) and bf16 at three batch sizes.
for batch in 32 128 512; do
  python benchmarks/train_throughput.py --configs=celeba_pixelcnn --dtypes=float32,bfloat16 --batch_size="$batch" \
      --steps=20
done
# The cached sampler per batch size (launch-bound below ~256 on an H100 in the last measurement).
python benchmarks/sampling.py --batch_sizes=1,32,256 --naive_steps=96,48,12
# SRIM's selection at the paper's sizes on 128 photo crops: float32 against bf16 features and bf16 candidates too,
# times and agreement (the round's time scales with the pool: x5 for the paper's 640).
python benchmarks/imle_step.py --agreement --photos --config.imle.pool_size=128 --repeats=1
