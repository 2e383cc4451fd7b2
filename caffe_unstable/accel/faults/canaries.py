"""Canaries: reference pictures run through the accelerator to detect accuracy drift (faults.md §9).

A canary set (`*.canaries.npz`, no pickles) holds the quantized inputs, the clean fixed-point output of the last
accelerated layer and its top-5; a check compares a run's outputs with them and grades the result in four levels.
Running the canaries is the caller's job (cu-test); this module is pure bookkeeping on arrays.
"""
import hashlib
import io
import json
from dataclasses import dataclass

import numpy as np

from ...errors import CaffeUnstableError
from .stats import wilson_interval

FORMAT = "caffe_unstable.canary_set/1"
LEVELS = ("exact", "benign", "degraded", "failed")


def model_sha256(prototxt_bytes, weights_bytes):
    """sha256 of the prototxt bytes followed by the weights bytes (the set's `model_sha256`)."""
    return hashlib.sha256(bytes(prototxt_bytes) + bytes(weights_bytes)).hexdigest()


def quant_sha256(formats):
    """sha256 of a quantization table's formats ({layer: LayerFormat}), independent of its file's comments and
    order (the set's `quant_sha256`)."""
    rows = {name: [f.frac_w, f.frac_din, f.frac_dout, f.w_bits] for name, f in formats.items()}
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode("utf-8")).hexdigest()


def class_scores(outputs, classes=None):
    """Per-class scores of canary outputs [n, K] (int8, the last accelerated layer's output flattened): the outputs
    themselves, or, when they are a `classes` x H x W map, each channel summed over its positions. A fully
    convolutional classifier (SqueezeNet: conv10, then a global average pool the accelerator does not run) ranks
    its classes that way; a sum is the average's ranking in exact integers. `classes` None: K classes."""
    o = np.asarray(outputs)
    o = o.reshape(len(o), -1).astype(np.int64)
    if classes and o.shape[1] != classes:
        if o.shape[1] % classes:
            raise CaffeUnstableError("canaries", f"outputs of {o.shape[1]} values are not a map of {classes} "
                                                 f"classes")
        o = o.reshape(len(o), classes, -1).sum(axis=2)
    return o


def top5(outputs, classes=None):
    """Indices of the 5 largest class scores per row (class_scores), largest first (ties: lower index first, a
    stable order)."""
    order = np.argsort(-class_scores(outputs, classes), axis=1, kind="stable")
    return order[:, :5].astype(np.int32)


@dataclass
class CanarySet:
    meta: dict
    inputs: np.ndarray        # int8 [n, C, H, W]
    labels: np.ndarray        # int32 [n] (−1 unknown)
    ref_output: np.ndarray    # int8 [n, K]
    ref_top5: np.ndarray      # int32 [n, 5]

    def save(self, path):
        from ...io.atomic import write_bytes
        buf = io.BytesIO()
        np.savez_compressed(buf, meta=np.frombuffer(json.dumps(self.meta).encode("utf-8"), np.uint8),
                            inputs=self.inputs.astype(np.int8), labels=self.labels.astype(np.int32),
                            ref_output=self.ref_output.astype(np.int8), ref_top5=self.ref_top5.astype(np.int32))
        write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path, model_sha=None):
        """Read a set; with `model_sha`, refuse a set made for another model (one line)."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode("utf-8"))
            if meta.get("format") != FORMAT:
                raise CaffeUnstableError(str(path), f"format: expected {FORMAT!r}, got {meta.get('format')!r}")
            out = cls(meta, z["inputs"], z["labels"], z["ref_output"], z["ref_top5"])
        if model_sha is not None and meta.get("model_sha256") != model_sha:
            raise CaffeUnstableError(str(path), f"canary set was made for a different model "
                                                f"(sha256 {meta.get('model_sha256')})")
        return out

    def expected_for(self, freq_mhz=None, ser=None):
        """The set's expectation for this operating point, or None."""
        for e in self.meta.get("expected") or []:
            if (freq_mhz is not None and e.get("freq_mhz") == freq_mhz) or (ser is not None and e.get("ser") == ser):
                return e
        return None


def grade(exact, top1, top5_frac, degraded_min=0.9):
    """Level 0 exact (all bit-exact), 1 benign (top-1 all equal), 2 degraded (top-5 ≥ degraded_min), 3 failed."""
    if exact == 1:
        return 0
    if top1 == 1:
        return 1
    return 2 if top5_frac >= degraded_min else 3


def check(outputs, ref_output, ref_top5, degraded_min=0.9, classes=None):
    """Per-check statistics of a canary batch: counts, fractions and the level (top-k over class_scores)."""
    outputs = np.asarray(outputs)
    n = len(outputs)
    exact = int(np.all(outputs.reshape(n, -1) == np.asarray(ref_output).reshape(n, -1), axis=1).sum())
    ref1 = np.asarray(ref_top5)[:, 0]
    got5 = top5(outputs.reshape(n, -1), classes)
    top1 = int((got5[:, 0] == ref1).sum())
    in5 = int((got5 == ref1[:, None]).any(axis=1).sum())
    level = grade(exact / n, top1 / n, in5 / n, degraded_min)
    return {"n": n, "exact": exact, "top1": top1, "top5": in5, "level": level, "name": LEVELS[level]}


def drifted(result, expected=None):
    """Drift: above the expected level, or top-5 below the expectation's lower 95 % Wilson bound; without an
    expectation, level ≥ 2."""
    if expected is None:
        return result["level"] >= 2
    lo, _ = wilson_interval(round(expected["top5"] * result["n"]), result["n"])
    return result["level"] > expected["level"] or result["top5"] / result["n"] < lo


def check_line(index, after_batch, result, expected=None):
    """`Canary check 3 (after batch 40): level 1 benign (exact 11/16, top-1 16/16, top-5 16/16; expected 1): OK`."""
    n = result["n"]
    exp = f"; expected {expected['level']}" if expected is not None else ""
    where = "before the first batch" if after_batch is None else f"after batch {after_batch}"
    verdict = "DRIFT" if drifted(result, expected) else "OK"
    return (f"Canary check {index} ({where}): level {result['level']} {result['name']} (exact {result['exact']}/{n}, "
            f"top-1 {result['top1']}/{n}, top-5 {result['top5']}/{n}{exp}): {verdict}")
