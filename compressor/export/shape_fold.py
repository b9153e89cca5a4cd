"""Fold the shape arithmetic of a traced graph: fewer nodes for every run to walk.

A TorchScript trace records every ``x.shape[i]`` and every ``view(*shape, -1, head_dim)``
as its own Shape -> Gather -> Unsqueeze -> Concat chain, per layer and per use, even
where the value is the same everywhere (the batch size, the sequence length) or fixed
(a layer's head count, ``head_dim``). ONNX Runtime folds none of it: its constant
folding stops at a Shape whose input has a dynamic axis, and its common-subexpression
elimination merges only identical nodes on identical inputs, not equal values computed
from different tensors. A cached Llama decoder (8 layers) traces to ~1,300 computing
nodes of which ~530 are such integer chains; at batch 1 with a short context each
decoding step pays about a microsecond per node whatever the model's width, a cost that
pruning does not shrink.

``fold_shapes`` runs ONNX Runtime's symbolic shape inference, which also tracks the
values of small integer tensors as sympy expressions in the graph's named axes
(``batch_size``, ``sequence_length``, ...), then

- replaces every integer or boolean tensor whose value it knows exactly (no named axis
  in it) by an initializer;
- reads every other such tensor from the first tensor computed with the same value, type
  and shape (one ``batch_size`` for the whole graph instead of one per layer);
- drops the nodes nothing reads any more.

Only integer/boolean tensors are touched (shape computations); float tensors keep their
nodes. Where the inference fails, the graph is left as it is (``fold_shapes`` returns
None). The caller checks the folded graph's parity against PyTorch, as for any graph.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

_INTEGRAL = {6: np.int32, 7: np.int64, 9: np.bool_}  # onnx.TensorProto INT32, INT64, BOOL


def _concrete(value) -> np.ndarray | None:
    """``value`` (a sympy data entry: a number, a sympy expression or nested lists of
    them) as a numpy array when it holds no symbol; else None."""
    import sympy

    def plain(v):
        if isinstance(v, (list, tuple)):
            out = [plain(x) for x in v]
            return None if any(x is None for x in out) else out
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, (bool, np.bool_, int, np.integer)):
            return v
        if isinstance(v, sympy.Basic):
            return int(v) if v.is_Integer else (bool(v) if v in (sympy.true, sympy.false) else None)
        return None

    p = plain(value)
    return None if p is None else np.asarray(p)


def _value_key(value):
    """A hashable, untruncated form of a sympy data entry (str() of a large numpy array
    elides its middle, which could make two different values look alike)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(_value_key(v) for v in value)
    return str(value)


def fold_shapes(src: Path, dst: Path) -> tuple[int, int] | None:
    """Write ``src`` with its integer shape arithmetic folded to ``dst``; (computing nodes
    before, after), or None when the shape inference fails (nothing written)."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(src))
    graph = model.graph
    before = sum(n.op_type != "Constant" for n in graph.node)
    if model.ByteSize() >= 2**31:
        return None  # a graph beyond protobuf's 2 GB limit is stored with external data: left as it is
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return None  # subgraphs (If, Loop) read outer tensors implicitly: not handled
    infer = SymbolicShapeInference(int_max=2**31 - 1, auto_merge=False, guess_output_rank=False, verbose=0)
    level = logging.getLogger("onnxruntime.tools.symbolic_shape_infer").level
    try:
        infer._preprocess(model)
        while infer.run_:
            infer._infer_impl()
        # private attributes of ORT's SymbolicShapeInference (1.31): values of the
        # integer tensors it tracked, and every tensor's inferred type
        values, infos = infer.sympy_data_, infer.known_vi_
    except Exception:  # any failure (an op it cannot infer, a changed ORT) costs only the folding
        return None
    finally:
        logging.getLogger("onnxruntime.tools.symbolic_shape_infer").setLevel(level)
    keep = {o.name for o in graph.output}
    replace: dict[str, str] = {}  # tensor -> the tensor to read instead
    first: dict[tuple, str] = {}  # (elem type, shape, value) -> first tensor with it
    constants = []
    for node in graph.node:
        for name in node.output:
            if name not in values or name in keep or name not in infos:
                continue
            ttype = infos[name].type.tensor_type
            if ttype.elem_type not in _INTEGRAL or not ttype.HasField("shape"):
                continue
            shape = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in ttype.shape.dim)
            if node.op_type == "Constant":
                continue  # already a constant; ORT reads it once
            fixed = _concrete(values[name])
            if fixed is not None and all(isinstance(s, int) for s in shape) and fixed.size == int(np.prod(shape)):
                folded = name + "__folded"
                constants.append(numpy_helper.from_array(fixed.astype(_INTEGRAL[ttype.elem_type]).reshape(shape),
                                                         folded))
                replace[name] = folded
                continue
            key = (ttype.elem_type, shape, _value_key(values[name]))
            if key in first:
                replace[name] = first[key]
            else:
                first[key] = name
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in replace:
                node.input[i] = replace[name]
    graph.initializer.extend(constants)
    _drop_dead(graph)
    after = sum(n.op_type != "Constant" for n in graph.node)
    onnx.save(model, str(dst))
    return before, after


def _drop_dead(graph) -> None:
    """Remove nodes (and initializers) whose outputs nothing reads, in one reverse pass:
    the nodes are in topological order, so a node's readers come after it."""
    needed = {o.name for o in graph.output}
    alive = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            alive.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(alive))
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
