#!/usr/bin/env bash
# The soft-error and overclocking sweeps of docs/faults.md on the real models and data of ../shared:
# LeNet (MNIST t10k), cifar10_quick (CIFAR-10 test) and SqueezeNet (the ImageNet sample), each over
# --ser 1e-7..1e-3 (both readings of "MAC result") and --freq 210..280 MHz with the shipped profile.
# Usage: scripts/fault_sweeps.sh OUT_DIR [lenet|cifar|squeezenet ...]   (env: LENET_ITERS, CIFAR_ITERS, SQ_IMAGES, SEED)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared}
OUT=$(mkdir -p "$1" && cd "$1" && pwd); shift
WORK=${WORK:-$OUT/work}
BIN=$ROOT/.venv/bin
SEED=${SEED:-7}
SER=1e-7:1e-3:0.5
FREQ=210:280:10
mkdir -p "$WORK/examples/mnist" "$WORK/examples/cifar10"
cd "$WORK"

sweeps() {   # name model weights quant iterations
  local name=$1 model=$2 weights=$3 quant=$4 iters=$5
  for site in accumulator32 product18; do
    "$BIN/cu-test" --model "$model" --weights "$weights" --quant "$quant" --iterations "$iters" --seed "$SEED" \
      --profile "$ROOT/models/profiles/ser_$site.devprofile.yaml" --ser $SER --json "$OUT/${name}_ser_$site.json" \
      2> "$OUT/${name}_ser_$site.log"
  done
  "$BIN/cu-test" --model "$model" --weights "$weights" --quant "$quant" --iterations "$iters" --seed "$SEED" \
    --freq $FREQ --json "$OUT/${name}_freq.json" 2> "$OUT/${name}_freq.log"
}

[ $# -gt 0 ] || set -- lenet cifar squeezenet
for net in "$@"; do
  case $net in
  lenet)
    [ -d examples/mnist/mnist_test_lmdb ] || "$BIN/cu-data" mnist "$SHARED/data/mnist/t10k-images-idx3-ubyte.gz" \
      "$SHARED/data/mnist/t10k-labels-idx1-ubyte.gz" examples/mnist/mnist_test_lmdb 2>/dev/null
    M=$SHARED/models/lenet_mnist
    sweeps lenet "$M/lenet_train_test.prototxt" "$M/lenet_iter_10000.caffemodel" "$ROOT/models/quant/lenet.quant.yaml" \
      "${LENET_ITERS:-100}" ;;
  cifar)
    cp "$SHARED/models/cifar10_quick/mean.binaryproto" examples/cifar10/
    [ -d examples/cifar10/cifar10_test_lmdb ] || "$BIN/cu-data" cifar10 "$SHARED/data/cifar10/test_batch.bin.xz" \
      examples/cifar10/cifar10_test_lmdb 2>/dev/null
    C=$SHARED/models/cifar10_quick
    sweeps cifar10_quick "$C/cifar10_quick_train_test.prototxt" "$C/cifar10_quick_iter_5000.caffemodel.h5" \
      "$ROOT/models/quant/cifar10_quick.quant.yaml" "${CIFAR_ITERS:-100}" ;;
  squeezenet)
    n=${SQ_IMAGES:-1000}
    "$BIN/python" "$ROOT/scripts/imagenet_sample_net.py" squeezenet_val.prototxt --batch 50 --images "$n"
    S=$SHARED/models/squeezenet_v1.0_deepcompression
    sweeps squeezenet squeezenet_val.prototxt "$S/squeezenet_v1.0_deepcompression.caffemodel" \
      "$ROOT/models/quant/squeezenet.quant.yaml" $(( n / 50 )) ;;
  esac
done
