"""Generated protobuf bindings for Caffe's caffe.proto (caffe_pb2, built by scripts/gen_proto.py)."""
