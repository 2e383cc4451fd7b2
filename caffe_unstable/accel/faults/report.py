"""What the fault models did, in words and numbers (faults.md §10.4): the `Fault model:` start lines, the
per-window `Faults TRAIN/TEST` summary lines and the `--fault-log` JSON Lines records.

Works on the per-layer counters an accelerator leaves in `acc.last_stats` after each forward; knows no Net.
"""
import json

from .carry_horizon import horizon_k, k_distribution

# counters summed over forwards and shown per image (in this order); the log's short names
TALLY_FIELDS = ("mac_flips", "outputs_changed", "outputs_saturated", "rate_events", "late_adds", "outputs_hit",
                "weight_flips", "act_flips", "stuck_outputs_changed")
LINE_FIELDS = (("mac_flips", "mac_flips"), ("outputs_changed", "outputs_changed"), ("outputs_saturated", "saturated"),
               ("late_adds", "late_adds"), ("outputs_hit", "outputs_hit"))


class FaultTally:
    """Per-image means of the fault counters over a window of forwards, totals and per layer."""

    def __init__(self):
        self.images = 0
        self.totals = {k: 0 for k in TALLY_FIELDS}
        self.by_layer = {}
        self._unknown = set()     # fields some backend left None (not computed)

    def add(self, last_stats):
        """Count one forward's `acc.last_stats` ({layer: stats})."""
        images = max((s.get("images") or 0 for s in last_stats.values()), default=0)
        self.images += images
        for layer, stats in last_stats.items():
            per_layer = self.by_layer.setdefault(layer, {k: 0 for k in TALLY_FIELDS})
            for k in TALLY_FIELDS:
                v = stats.get(k)
                if v is None:
                    self._unknown.add(k)
                    continue
                self.totals[k] += v
                per_layer[k] += v

    def per_image(self):
        """{field: mean per image} (None for a field no backend computed)."""
        n = max(self.images, 1)
        return {k: (None if k in self._unknown and not self.totals[k] else self.totals[k] / n)
                for k in TALLY_FIELDS}

    def line(self, what):
        """`Faults TEST 0: mac_flips 24013.2, outputs_changed 11021.5, ... (conv2 3301.1, conv1 2950.4, ...)`."""
        means = self.per_image()
        parts = [f"{short} {_num(means[k])}" for k, short in LINE_FIELDS]
        key = "mac_flips" if self.totals["mac_flips"] else ("late_adds" if self.totals["late_adds"] else None)
        worst = ""
        if key is not None:
            n = max(self.images, 1)
            ranked = sorted(self.by_layer.items(), key=lambda kv: -kv[1][key])[:3]
            worst = " (" + ", ".join(f"{layer} {_num(v[key] / n)}" for layer, v in ranked if v[key]) + ")"
        return f"Faults {what}: " + ", ".join(parts) + worst


def _num(v):
    return "n/a" if v is None else f"{v:.1f}"


def model_lines(acc, geometries):
    """The `Fault model: ...` lines of faults.md §10.4 for an accelerator over a net's accelerated layers
    ([(layer index, name, geometry dict)]); empty when no fault model is active."""
    lines = []
    if acc.fault_layers is not None:
        geometries = [g for g in geometries if g[1] in acc.fault_layers]
    seed = f"seed {acc.seed}" + (f" (drawn; pass --seed {acc.seed} to reproduce)" if acc.seed_drawn else "")
    prof = acc.profile
    for model in acc.models:
        if model.name == "carry_horizon":
            head = f"Fault model: carry_horizon, profile {prof.name} ({prof.status}), "
            if model.fixed_k is not None:
                lines.append(head + f"fixed K = {model.fixed_k}, {seed}")
                continue
            extra = ""
            if model.jitter_ns > 0:
                dist = k_distribution(model.freq_mhz, model.t0_ns, model.tau_ns_per_bit, model.jitter_ns)
                k_mode = int(dist.argmax())
                below = [k for k in range(k_mode) if dist[k] >= 5e-4]
                extra = f" (P(K={below[-1]}) = {dist[below[-1]]:.3f})" if below else ""
            else:
                k_mode = horizon_k(model.freq_mhz, model.t0_ns, model.tau_ns_per_bit)
            lines.append(head + f"f = {model.freq_mhz:g} MHz, K = {k_mode}{extra}, jitter {model.jitter_scope}, "
                                f"{seed}")
        elif model.name == "rate":
            lines.append(f"Fault model: rate, profile {prof.name} ({prof.status}), f = {model.freq_mhz:g} MHz, "
                         f"p = {model.p():.3g} per accumulate add, {seed}")
        elif model.name == "mac_flip":
            n_mac = sum(model.n_chances(g) for _, _, g in geometries)
            lo, hi = model.bit_range(geometries[0][2]) if geometries else (0, 31)
            lines.append(f"Fault model: mac_flip, rate {model.rate:.3g} per MAC, site {model.site}, bits [{lo}, {hi}], "
                         f"count {model.count}, N_MAC/image {n_mac:,} ({model.rate * n_mac:,.0f} flips expected), "
                         f"{seed}")
        elif model.name == "memory":
            lines.append(f"Fault model: memory, weights {model.p_weight:.3g} per bit ({model.weight_scope}), "
                         f"activations {model.p_act:.3g} per bit, {seed}")
        elif model.name == "stuck_at":
            lines.append(f"Fault model: stuck_at, {model.counts()}")
    if acc.fault_layers is not None and lines:
        lines.append(f"Fault layers: {', '.join(acc.fault_layers)}")
    return lines


class FaultLog:
    """`--fault-log OUT.jsonl`: one JSON object per forward pass per accelerated layer (faults.md §10.4)."""

    def __init__(self, path):
        self.path = path
        self._file = open(path, "w")

    def write(self, acc, layer_indices):
        plan = acc.last_plan
        key = {"phase": plan.phase, "iteration": plan.iteration, "pass": plan.pass_} if plan is not None else \
            {"phase": None, "iteration": None, "pass": None}
        for layer, stats in acc.last_stats.items():
            record = dict(key, layer=layer, layer_index=layer_indices.get(layer))
            record.update({k: v for k, v in stats.items() if k != "path"})
            self._file.write(json.dumps(record) + "\n")

    def close(self):
        self._file.close()
