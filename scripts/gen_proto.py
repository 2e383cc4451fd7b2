"""Generate caffe_unstable/proto/caffe_pb2.py from proto/caffe.proto with grpcio-tools' bundled protoc.

grpcio-tools 1.81.1 ships protoc 33.5, whose Python gencode needs the protobuf 6.33.x runtime pinned in setup.cfg.
Run: python scripts/gen_proto.py
"""
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "proto" / "caffe.proto"
OUT = ROOT / "caffe_unstable" / "proto"


def main() -> int:
    from grpc_tools import protoc

    # caffe.proto declares `package caffe`; generating from proto/ yields caffe_pb2.py
    rc = protoc.main(["protoc", f"-I{SRC.parent}", f"--python_out={OUT}", str(SRC)])
    if rc != 0:
        print(f"error: {SRC}: protoc failed (exit {rc})", file=sys.stderr)
        return 1
    shutil.copyfile(SRC, OUT / "caffe.proto")  # shipped beside the gencode for reference
    return 0


if __name__ == "__main__":
    code = main()
    if code:
        raise SystemExit(code)
