"""Pure NetParameter transforms: Net::FilterNet (net.cpp:261-354) and InsertSplits (util/insert_splits.cpp)."""
from ..errors import CaffeUnstableError
from ..proto import caffe_pb2


def state_meets_rule(state, rule, layer_name, log=None):
    """Caffe's Net::StateMeetsRule: every condition present in the rule must hold."""
    def say(msg, line):
        if log is not None:
            log.info(msg, f"net.cpp:{line}")

    if rule.HasField("phase") and rule.phase != state.phase:
        say(f"The NetState phase ({state.phase}) differed from the phase ({rule.phase}) specified by a rule "
            f"in layer {layer_name}", 296)
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        say(f"The NetState level ({state.level}) is above the min_level ({rule.min_level}) specified by a rule "
            f"in layer {layer_name}", 306)
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        say(f"The NetState level ({state.level}) is above the max_level ({rule.max_level}) specified by a rule "
            f"in layer {layer_name}", 316)
        return False
    for stage in rule.stage:
        if stage not in state.stage:
            say(f"The NetState did not contain stage '{stage}' specified by a rule in layer {layer_name}", 332)
            return False
    for stage in rule.not_stage:
        if stage in state.stage:
            say(f"The NetState contained a not_stage '{stage}' specified by a rule in layer {layer_name}", 347)
            return False
    return True


def filter_net(param, where="", log=None):
    """A copy of `param` holding only the layers its `state` includes (include/exclude rules)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    out.ClearField("layer")
    for layer in param.layer:
        if len(layer.include) and len(layer.exclude):
            raise CaffeUnstableError(where, f"Specify either include rules or exclude rules; not both. "
                                            f"(layer '{layer.name}')")
        if len(layer.include):
            keep = any(state_meets_rule(param.state, r, layer.name, log) for r in layer.include)
        else:
            keep = not any(state_meets_rule(param.state, r, layer.name, log) for r in layer.exclude)
        if keep:
            out.layer.add().CopyFrom(layer)
    return out


def split_layer_name(blob, producer, top_index):
    return f"{blob}_{producer}_{top_index}_split"


def split_blob_name(blob, producer, top_index, split_index):
    return f"{blob}_{producer}_{top_index}_split_{split_index}"


def insert_splits(param):
    """A copy of `param` with Split layers after every top consumed more than once (InsertSplits)."""
    layers = list(param.layer)
    producer = {}             # blob name -> (layer index, top index) of its latest writer
    bottom_src = {}           # (layer index, bottom index) -> (producer layer, top index)
    uses = {}                 # (layer, top) -> number of consumers (+1 for an explicit loss weight)
    loss_weight_of = {}
    for i, layer in enumerate(layers):
        for j, b in enumerate(layer.bottom):
            if b not in producer:
                raise CaffeUnstableError(f"layer '{layer.name}'", f"Unknown bottom blob '{b}' (layer "
                                                                   f"'{layer.name}', bottom index {j})")
            src = producer[b]
            bottom_src[(i, j)] = src
            uses[src] = uses.get(src, 0) + 1
        for j, t in enumerate(layer.top):
            producer[t] = (i, j)
        for j in range(len(layer.top)):
            lw = layer.loss_weight[j] if j < len(layer.loss_weight) else 0.0
            if lw:
                loss_weight_of[(i, j)] = lw
                uses[(i, j)] = uses.get((i, j), 0) + 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    out.ClearField("layer")
    next_split = {}  # (layer, top) -> next split index handed to a consumer
    for i, layer in enumerate(layers):
        new = out.layer.add()
        new.CopyFrom(layer)
        for j in range(len(layer.bottom)):
            src = bottom_src[(i, j)]
            if uses.get(src, 0) > 1:
                pi, pj = src
                p = layers[pi]
                k = next_split.get(src, 0)
                new.bottom[j] = split_blob_name(p.top[pj], p.name, pj, k)
                next_split[src] = k + 1
        for j, t in enumerate(layer.top):
            n = uses.get((i, j), 0)
            if n <= 1:
                continue
            split = out.layer.add(name=split_layer_name(t, layer.name, j), type="Split")
            split.bottom.append(t)
            lw = loss_weight_of.get((i, j), 0.0)
            for k in range(n):
                split.top.append(split_blob_name(t, layer.name, j, k))
                if lw:
                    split.loss_weight.append(lw if k == 0 else 0.0)
            if lw:
                # the weight moves to split top 0 and its consumers start at split top 1; Caffe clears
                # the producer's whole loss_weight list here (clear_loss_weight), so do we
                new.ClearField("loss_weight")
                next_split[(i, j)] = 1
    return out
