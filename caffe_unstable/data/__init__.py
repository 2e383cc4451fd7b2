"""Input pipelines of Caffe's data layers: DataTransformer (transform.py) and record sources (sources.py)."""
