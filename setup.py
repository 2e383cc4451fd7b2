"""Build hook: generate caffe_unstable/proto/caffe_pb2.py from proto/caffe.proto at build time."""
import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithProto(build_py):
    def run(self):
        here = Path(__file__).resolve().parent
        runpy.run_path(str(here / "scripts" / "gen_proto.py"), run_name="__main__")
        super().run()


setup(cmdclass={"build_py": BuildWithProto})
