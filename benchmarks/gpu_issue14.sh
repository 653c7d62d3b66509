#!/usr/bin/env bash
# Issue 14's GPU rows, from the repository root with a CUDA jax installed:
#   bash benchmarks/gpu_issue14.sh 2>&1 | grep -v '^[IW][0-9]'
# Where TensorFlow is not installed (a CUDA image with JAX alone): RUN="python benchmarks/no_tensorflow.py" bash ...
# On one H100 (2026-11-27) it took ~12 minutes: each train_throughput.py process spends ~60 s compiling and
# autotuning the CelebA step, so split it over calls where a call is limited. The figures are in
# benchmarks/README.md, "GPU goals of issue 14".
set -euo pipefail
RUN=${RUN:-python}
# Mixed precision: the CelebA step in float32 (TF32 where XLA allows it) and bf16 at three batch sizes, one process
# each (so each device peak is its own).
for batch in 32 128 512; do
  for dtype in float32 bfloat16; do
    $RUN benchmarks/train_throughput.py --configs=celeba_pixelcnn --dtypes="$dtype" --batch_size="$batch" \
        --steps=$((640 / batch < 10 ? 10 : 640 / batch))
  done
done
# The cached sampler per batch size, with the kernels one pixel step launches, XLA's colour passes against the
# Pallas kernel's (config.model.pixel_kernel; not yet run on a GPU); then with XLA's command buffers (CUDA graphs)
# extended to the loops, which made batch 1 3.8x slower on the H100.
$RUN benchmarks/sampling.py --batch_sizes=1,32,256 --naive_steps=0,0,0 --pixel_kernels=xla,pallas
XLA_FLAGS=--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL \
  $RUN benchmarks/sampling.py --batch_sizes=1 --naive_steps=0
# SRIM's selection at the paper's sizes on a pool of 128: float32 against bf16 features and bf16 candidates too,
# times and agreement (the round's time scales with the pool: x5 for the paper's 640).
$RUN benchmarks/imle_step.py --agreement --config.imle.pool_size=128 --repeats=1
