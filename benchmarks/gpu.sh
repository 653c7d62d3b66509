#!/usr/bin/env bash
# The GPU rows of benchmarks/README.md, from the repository root with a CUDA jax installed:
#   bash benchmarks/gpu.sh [SECTION ...] 2>&1 | grep -v '^[IW][0-9]'
# SECTION: train, sampling, srim (default: all three). Where TensorFlow is not installed (a CUDA image with JAX alone):
#   RUN="python benchmarks/no_tensorflow.py" bash benchmarks/gpu.sh ...   (PYTHON=python3 where that is its
#   name; then RUN="python3 benchmarks/no_tensorflow.py"). An image without ml_collections and clu needs their wheels
#   (pure Python: ml_collections 1.1.0, clu 0.0.12) installed first, e.g. with pip's --target and PYTHONPATH.
# On one H100 (2026-11-27) the three took ~12 minutes: each train_throughput.py process spends ~60 s compiling and
# autotuning the CelebA step; sampling ~1 minute, srim ~1.5. The figures are in benchmarks/README.md, "On one H100".
set -euo pipefail
PYTHON=${PYTHON:-python}
RUN=${RUN:-$PYTHON}
SECTIONS=${*:-train sampling srim}
for section in $SECTIONS; do
  case $section in
    train)  # Mixed precision: the CelebA step in float32 (TF32 where XLA allows it) and bf16 at three batch sizes,
            # one process each (so each device peak is its own).
      for batch in 32 128 512; do
        for dtype in float32 bfloat16; do
          $RUN benchmarks/train_throughput.py --configs=celeba_pixelcnn --dtypes="$dtype" --batch_size="$batch" \
              --steps=$((640 / batch < 10 ? 10 : 640 / batch))
        done
      done ;;
    sampling)  # The Pallas colour passes against the naive sampler, compiled for the GPU (the CPU only interprets
               # them); then the cached sampler per batch size with the kernels one pixel step launches, XLA's
               # colour passes against the Pallas kernel's; then XLA's command buffers (CUDA graphs) extended to
               # the loops, which made batch 1 3.8x slower on the H100.
      $PYTHON -m pytest -q tests/pixelsr/test_sampling.py -k pallas || echo "the Pallas tests failed here (above); timing anyway"
      $RUN benchmarks/sampling.py --batch_sizes=1,32,256 --naive_steps=0,0,0 --pixel_kernels=xla,pallas
      XLA_FLAGS=--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL \
        $RUN benchmarks/sampling.py --batch_sizes=1 --naive_steps=0 ;;
    srim)  # SRIM's selection at the paper's sizes on a pool of 128: float32 against bf16 features and bf16
           # candidates too, times and agreement (the round's time scales with the pool: x5 for the paper's 640).
      $RUN benchmarks/imle_step.py --agreement --config.imle.pool_size=128 --repeats=1 ;;
    *) echo "unknown section '$section': train, sampling or srim" >&2; exit 2 ;;
  esac
done
