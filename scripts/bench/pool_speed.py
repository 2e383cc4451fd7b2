"""Pooling (MAX, AVE) and LRN layers of LeNet, cifar10_quick and AlexNet against PyTorch CPU: forward and
forward+backward time, same shapes, same run, after checking tops and gradients agree (conv_speed.py's harness).

Threads: OMP_NUM_THREADS (default 2) for both sides. Prints ours/peer ratios (< 1 means we are faster).
Run: python scripts/bench/pool_speed.py [--repeat N] [--cpu-time]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conv_speed import main  # noqa: E402

POOL = 'type: "Pooling" pooling_param {{ pool: {} kernel_size: {} stride: 2 }}'
CASES = [
    ("lenet pool1", (64, 20, 24, 24), POOL.format("MAX", 2)),
    ("cifar pool1", (100, 32, 32, 32), POOL.format("MAX", 3)),
    ("cifar pool2", (100, 32, 16, 16), POOL.format("AVE", 3)),
    ("alex pool1", (10, 96, 55, 55), POOL.format("MAX", 3)),
    ("alex pool5", (10, 256, 13, 13), POOL.format("MAX", 3)),
    ("alex norm1", (10, 96, 55, 55), 'type: "LRN" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }'),
    ("alex norm2", (10, 256, 27, 27), 'type: "LRN" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }'),
]

if __name__ == "__main__":
    main(CASES, __doc__)
