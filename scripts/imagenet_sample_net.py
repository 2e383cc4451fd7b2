"""Write a TEST net that scores SqueezeNet (or another ImageNet deploy net) on the 1,000-image ImageNet sample of
../shared/data/imagenet_sample, for cu-test sweeps and cu-characterize calibrate.

The deploy net's `input:` is replaced by an ImageData layer (Caffe's DataTransformer: center crop 227, BGR means
104/117/123, as the shared models' README measures them) with a label top, and Accuracy layers for top-1 and
top-5 are added on the last layer. Paths in the written prototxt are absolute.

Run: python scripts/imagenet_sample_net.py OUT.prototxt [--deploy DEPLOY] [--batch 50] [--images N]
                                          [--every K | --held-out K]
(--every 10: the 100 calibration images of models/quant/squeezenet.quant.yaml; --held-out 10: the other 900)
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"

from google.protobuf import text_format  # noqa: E402

from caffe_unstable.io.prototxt import read_net_text  # noqa: E402
from caffe_unstable.proto import caffe_pb2  # noqa: E402


def sample_net(deploy, source, root_folder, batch, crop=227, mean=(104, 117, 123)):
    net = read_net_text(str(deploy))
    out = caffe_pb2.NetParameter(name=net.name)
    data = out.layer.add(name="data", type="ImageData", top=["data", "label"])
    data.include.add(phase=caffe_pb2.TEST)
    data.transform_param.crop_size = crop
    data.transform_param.mean_value.extend(mean)
    p = data.image_data_param
    p.source, p.root_folder, p.batch_size = str(source), str(root_folder).rstrip("/") + "/", batch
    last = None
    for layer in net.layer:
        if layer.type in ("Input", "Softmax"):
            continue
        out.layer.add().CopyFrom(layer)
        last = layer.top[0]
    for k in (1, 5):
        acc = out.layer.add(name=f"accuracy_top{k}", type="Accuracy", bottom=[last, "label"], top=[f"accuracy_top{k}"])
        acc.accuracy_param.top_k = k
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--deploy", default=str(SHARED / "models/squeezenet_v1.0_deepcompression/SqueezeNet_deploy.prototxt"))
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--images", type=int, default=0, help="use only the first N list entries (0 = all 1,000)")
    pick = ap.add_mutually_exclusive_group()
    pick.add_argument("--every", type=int, default=0, help="use every K-th list entry (the first, the K+1-th, ...)")
    pick.add_argument("--held-out", type=int, default=0, help="use the entries --every K leaves out")
    args = ap.parse_args()
    sample = SHARED / "data/imagenet_sample"
    source = sample / "sample_val.txt"
    if args.images or args.every or args.held_out:
        lines = [ln for ln in source.read_text().splitlines() if ln.strip()]
        if args.every:
            lines = lines[::args.every]
        if args.held_out:
            lines = [ln for i, ln in enumerate(lines) if i % args.held_out]
        if args.images:
            lines = lines[:args.images]
        source = Path(args.out).with_suffix(".list.txt")
        source.write_text("\n".join(lines) + "\n")
    net = sample_net(args.deploy, source.resolve(), (sample / "images").resolve(), args.batch)
    Path(args.out).write_text(text_format.MessageToString(net))


if __name__ == "__main__":
    main()
