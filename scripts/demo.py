"""make demo: Caffe's MNIST tutorial (examples/mnist) on Fashion-MNIST with the cu-* tools, from nothing.

1. cu-data mnist: the Debian package's idx files -> demo_out/fmnist_{train,test}_lmdb (kept when already complete);
2. cu-train models/lenet_fmnist/lenet_solver.prototxt: Caffe's LeNet solver, 500 SGD iterations (full log in
   demo_out/train.log, progress here);
3. cu-test on the iteration-500 snapshot over all 10,000 test images (100 batches of 100).
BVLC Caffe's own run of the same solver on the same LMDBs reached accuracy 0.8166 (../shared/golden/training).
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "demo_out"
SOLVER = "models/lenet_fmnist/lenet_solver.prototxt"
NET = "models/lenet_fmnist/lenet_train_test.prototxt"
SNAPSHOT = "demo_out/lenet_fmnist_iter_500.caffemodel"
FMNIST = Path(os.environ.get("CU_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
SPLITS = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000)}
CAFFE = {"accuracy": 0.8166, "loss": 0.500666}          # golden/training/lenet_fmnist_test.log
PROGRESS = ("Iteration", "Test net output", "Snapshotting to", "Optimization Done")


class DemoError(Exception):
    pass


def tool(name):
    """The cu-* console script of this environment (beside its python), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise DemoError(f"{name} not found: install the project first (make setup)")
    return found


def entries(path):
    """Records in an LMDB, or None when it cannot be opened."""
    import lmdb

    try:
        env = lmdb.open(str(path), readonly=True, lock=False)
    except lmdb.Error:
        return None
    with env:
        return env.stat()["entries"]


def step(title):
    print(f"\n== {title}", flush=True)


def run_logged(args, log_path, show):
    """Run a cu-* command from the repository root; its glog lines go to `log_path`, those `show` accepts to the
    screen without their prefix. Returns the log text."""
    print("$ " + " ".join([Path(args[0]).name] + args[1:]), flush=True)
    lines = []
    with subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True) as proc, open(log_path, "w") as log:
        for line in proc.stderr:
            log.write(line)
            lines.append(line)
            message = line.split("] ", 1)[-1].rstrip("\n")
            if line.startswith("error:"):
                print(line, end="", file=sys.stderr)
            elif show(message):
                print("   " + message, flush=True)
    if proc.returncode:
        raise DemoError(f"{Path(args[0]).name} failed (exit {proc.returncode}); full log: {log_path}")
    return "".join(lines)


def build_lmdbs():
    step("Fashion-MNIST -> LMDB (cu-data mnist, Caffe's convert_mnist_data)")
    for split, (images, labels, count) in SPLITS.items():
        out = WORK / f"fmnist_{split}_lmdb"
        if entries(out) == count:
            print(f"{out.relative_to(ROOT)}: {count} records, already built")
            continue
        if out.exists():                       # not ours to trust: an old or foreign folder
            shutil.rmtree(out)
        paths = [FMNIST / images, FMNIST / labels]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DemoError(f"{missing[0]}: Fashion-MNIST not found; install the Debian package "
                            "dataset-fashion-mnist (make demo does) or set CU_FASHION_MNIST to its folder")
        run_logged([tool("cu-data"), "mnist", *map(str, paths), str(out.relative_to(ROOT))],
                   WORK / f"cu-data-{split}.log", lambda m: m.startswith(("A total", "Processed")))


def train():
    step("Training LeNet (cu-train, Caffe's lenet_solver: SGD, 500 iterations of 64 images)")
    start = time.perf_counter()
    run_logged([tool("cu-train"), SOLVER], WORK / "train.log",
               lambda m: m.strip().startswith(PROGRESS) and ", lr = " not in m)
    print(f"({time.perf_counter() - start:.0f} s; full log: demo_out/train.log, parse it with Caffe's "
          "tools/extra/parse_log.py)")


def test():
    step("Testing the snapshot on all 10,000 test images (cu-test, 100 batches of 100)")
    text = run_logged([tool("cu-test"), "--model", NET, "--weights", SNAPSHOT, "--iterations", "100",
                       "--json", "demo_out/test.json"], WORK / "test.log",
                      lambda m: m.startswith(("Loss:", "accuracy =")))
    import json

    outputs = json.loads((WORK / "test.json").read_text())["outputs"]
    print(f"\nLeNet on Fashion-MNIST after 500 iterations: test accuracy {outputs['accuracy']:.4f}, "
          f"loss {outputs['loss']:.6g} (BVLC Caffe, same solver and data: {CAFFE['accuracy']}, {CAFFE['loss']})")
    return text


def main():
    WORK.mkdir(exist_ok=True)
    build_lmdbs()
    train()
    test()


if __name__ == "__main__":
    try:
        main()
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
