"""Per-image top-k hits of a net's TEST data on the accelerator under one fault setting: the measurement
`cu-characterize calibrate` pairs across horizons and clocks (faults.md §8.4). Every call rebuilds the net, so
its data layer starts again at the first record: every setting sees the same images, with the same seed.
"""
import numpy as np

from ..errors import CaffeUnstableError


class TopKHits:
    """hits(horizon_k=None, profile=None, freq_mhz=None) -> float64 0/1 array, one entry per image.

    The scores and labels are the bottoms of the net's Accuracy layer (Caffe's tie rule: ties count against).
    """

    def __init__(self, model, weights, quant, iterations, seed, base_profile, top_k=5, level=0, stages=("",),
                 backend="numba"):
        self.model, self.weights, self.quant = model, weights, quant
        self.iterations, self.seed, self.base = int(iterations), int(seed), base_profile
        self.top_k, self.level, self.stages, self.backend = int(top_k), level, list(stages), backend
        self.calls = 0

    def __call__(self, horizon_k=None, profile=None, freq_mhz=None):
        from .. import accel
        from ..log import NullLogger
        from ..net.net import TEST, Net
        from ..ops.accuracy import accuracy_forward

        faults = {}
        if horizon_k is not None:
            faults = {"profile": self.base, "horizon_k": int(horizon_k)}
        elif profile is not None:
            faults = {"profile": profile, "freq_mhz": freq_mhz}
        acc = accel.open(self.backend, quant=self.quant, seed=self.seed, **faults)
        net = Net(self.model, TEST, level=self.level, stages=self.stages, weights=self.weights, accel=acc,
                  rng=self.seed, log=NullLogger())
        scores_id, labels_id = self._accuracy_bottoms(net)
        out = []
        for _ in range(self.iterations):
            net.forward_prefilled()
            scores = net._blob_list[scores_id].data
            labels = net._blob_list[labels_id].data.reshape(-1).astype(np.int64)
            s = scores.reshape(len(labels), -1, 1)
            out.append(accuracy_forward(s, labels[:, None], np.ones((len(labels), 1), bool), self.top_k)[:, 0])
        self.calls += 1
        return np.concatenate(out).astype(np.float64)

    def _accuracy_bottoms(self, net):
        for i, layer in enumerate(net.layers):
            if layer.type == "Accuracy":
                return net._bottom_ids[i][0], net._bottom_ids[i][1]
        raise CaffeUnstableError(self.model, "calibrate needs a TEST net with an Accuracy layer (its bottoms give "
                                             "the scores and labels)")
