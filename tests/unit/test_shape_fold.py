"""export/shape_fold.py on small hand-built graphs: fixed shape values become
initializers, equal symbolic values are computed once, outputs do not change; graphs
with subgraphs are left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from compressor.export.shape_fold import fold_shapes


def _reshape_chain_graph():
    """x [batch, seq, 8] -> two reshapes to [batch, seq, 2, 4] (each with its own
    Shape -> Gather -> Unsqueeze -> Concat chain, as a trace writes them), summed."""
    nodes, inits = [], [numpy_helper.from_array(np.array(i, dtype=np.int64), f"i{i}") for i in (0, 1, 2)]
    inits += [numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
              numpy_helper.from_array(np.array([2, 4], dtype=np.int64), "tail")]
    outs = []
    for k in range(2):
        p = f"c{k}_"
        nodes += [
            helper.make_node("Shape", ["x"], [p + "shape"]),
            helper.make_node("Gather", [p + "shape", "i0"], [p + "b"]),
            helper.make_node("Gather", [p + "shape", "i1"], [p + "s"]),
            helper.make_node("Gather", [p + "shape", "i2"], [p + "h"]),  # 8: fixed
            helper.make_node("Unsqueeze", [p + "b", "axis0"], [p + "b1"]),
            helper.make_node("Unsqueeze", [p + "s", "axis0"], [p + "s1"]),
            helper.make_node("Concat", [p + "b1", p + "s1", "tail"], [p + "target"], axis=0),
            helper.make_node("Reshape", ["x", p + "target"], [p + "y"]),
            helper.make_node("Mul", [p + "y", p + "hf"], [p + "out"]),
            helper.make_node("Cast", [p + "h"], [p + "hf"], to=TensorProto.FLOAT),
        ]
        outs.append(p + "out")
    nodes.append(helper.make_node("Add", outs, ["y"]))
    # nodes listed in a valid topological order: each Cast before its Mul
    order = []
    for n in nodes:
        if n.op_type == "Mul":
            continue
        order.append(n)
        if n.op_type == "Cast":
            order.append(next(m for m in nodes if m.op_type == "Mul" and m.input[1] == n.output[0]))
    graph = helper.make_graph(
        order, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_fold_shapes_merges_equal_values_and_keeps_outputs(tmp_path):
    src, dst = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(_reshape_chain_graph(), str(src))
    before, after = fold_shapes(src, dst)
    assert before == 21
    folded = onnx.load(str(dst)).graph
    ops = [n.op_type for n in folded.node]
    # one Shape chain left for batch and seq; the fixed 8 an initializer (no third Gather),
    # which the float Casts (float tensors are not touched) now read
    assert ops.count("Shape") == 1 and ops.count("Gather") == 2 and ops.count("Concat") == 1
    inits = {t.name for t in folded.initializer}
    assert all(n.input[0] in inits for n in folded.node if n.op_type == "Cast")
    assert after == len(ops) < before
    rng = np.random.default_rng(0)
    for shape in [(1, 1, 8), (3, 5, 8), (2, 0, 8)]:  # other batch and sequence sizes, an empty one
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(_run(dst, x), _run(src, x), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(_run(dst, x), 16 * x.reshape(*shape[:2], 2, 4), rtol=1e-6)


def test_fold_shapes_leaves_graphs_with_subgraphs(tmp_path):
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "b", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(True))),
         helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    src, dst = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(src))
    assert fold_shapes(src, dst) is None
    assert not dst.exists()
