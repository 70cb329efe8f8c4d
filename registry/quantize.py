"""int8 for encoder graphs: int8 weights per output channel, uint8 activations per token.

Why not ONNX Runtime's dynamic quantizer alone (``quantize_dynamic`` / optimum's
``ORTQuantizer``): it computes one activation scale per tensor, that is per *batch*. Measured on
the real all-MiniLM-L6-v2 (61 varied sentences of registry/validation_texts.py, cosine of the
pooled embedding against fp32; more rows in docs/onnx.md):

===========================================================  ======  ======
quantization (cosine int8 vs fp32)                           mean    min
===========================================================  ======  ======
ORT dynamic, per-tensor weights (the first wave), O2         0.9456  0.7485
ORT dynamic, per-channel weights, O2                         0.9900  0.9489
ORT dynamic, per-channel, only the FFN up-projections, O2    0.9962  0.9692
this module, O2 (fused Attention stays fp32)                 0.9991  0.9946
this module, O1 (every projection int8)                      0.9983  0.9902
===========================================================  ======  ======

The loss is in the activations, not the weights (weights alone, fake-quantized: min 0.9946).
BERT-style encoders carry a few huge values: in all-MiniLM-L6-v2 hidden channel 99 of the [CLS]
token reaches 28 at the input of every FFN up-projection, where the median channel is under 1, so
one scale per tensor leaves the other tokens of a short sentence a handful of levels ("Thanks!"
is the worst sentence of the set). No single node is to blame (excluding any one MatMul moves the
minimum by at most 0.02), so excluding nodes cannot reach the floor while keeping the speed; one
scale per token confines the outlier to its own row. It also makes a text's int8 answer
independent of what else is in its batch: a per-tensor scale depends on the loudest neighbour.

ONNX has no per-token dynamic quantization operator, so each ``MatMul`` with a constant weight
``W[K, N]`` becomes two row reductions, one per-axis ``QuantizeLinear`` over the [tokens, K]
view of X (a scale and zero point per row), and ORT's ``MatMulIntegerToFloat`` (u8 x s8, the
VNNI kernel), which takes a scale per row::

    s = (max(X, 0) - min(X, 0)) / 255 per token,   zp = round(-min / s)
    Y = MatMulIntegerToFloat(QuantizeLinear(X, s, zp), Wq, s, w_scale) - zp * s * colsum(W)

with ``Wq = round(W / w_scale)`` symmetric int8 per output column. Written first as separate
element-wise ops (divide, round, add, clip, cast) the rewrite was slower than fp32: those passes
over X cost more than the int8 product saved. ORT's fused ``Attention`` nodes (O2/O3) keep their
query/key/value projections fp32 (rewritten into int8 projections plus ``MultiHeadAttention``
they were no faster here); with O1 those projections are plain MatMuls and are quantized too.
"""

from __future__ import annotations

from pathlib import Path

METHOD = "per-token-activations"
_EPS = 1e-8


def quantize_encoder(src: Path, dst: Path, external_data: bool = False) -> dict:
    """Write the int8 graph of ``src`` to ``dst``; returns what was quantized (for the recipe).
    ``external_data``: the graph is over protobuf's 2 GB, its weights live beside it."""
    import onnx

    model = onnx.load(str(src))
    rewrite = _Rewrite(model)
    rewrite.run()
    if external_data:
        onnx.save(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=dst.name + "_data")
    else:
        onnx.save(model, str(dst))
    return {"method": METHOD, "weights": "int8, symmetric, per output channel",
            "activations": "uint8, dynamic, asymmetric, per token",
            "quantized": dict(sorted(rewrite.quantized.items())),
            "kept_fp32": dict(sorted(rewrite.kept.items()))}


class _Rewrite:
    def __init__(self, model):
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.inits = {i.name: i for i in self.graph.initializer}
        self.nodes: list = []
        self.new_inits: list = []
        self.quantized: dict[str, int] = {}
        self.kept: dict[str, int] = {}
        self.quantized_inputs: dict[tuple, tuple] = {}
        self.to_array = numpy_helper.to_array

    # -- helpers --------------------------------------------------------------------------

    def op(self, kind: str, inputs: list[str], out: str, **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(kind, inputs, [out], name=out, **attrs))
        return out

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        if name not in self.inits:
            tensor = numpy_helper.from_array(value, name)
            self.inits[name] = tensor
            self.new_inits.append(tensor)
        return name

    def weight(self, name: str):
        import numpy as np

        tensor = self.inits.get(name)
        if tensor is None:
            return None
        w = self.to_array(tensor)
        return w if w.ndim == 2 and w.dtype == np.float32 else None

    def reduce(self, kind: str, source: str, out: str) -> str:
        import numpy as np

        if self.opset >= 18:
            axes = self.const("per_token_axes", np.array([-1], dtype=np.int64))
            return self.op(kind, [source, axes], out, keepdims=1)
        return self.op(kind, [source], out, axes=[-1], keepdims=1)

    def int8_weight(self, p: str, w) -> tuple[str, str, object]:
        import numpy as np

        scale = (np.maximum(np.abs(w).max(axis=0), _EPS) / 127.0).astype(np.float32)
        wq = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        colsum = (wq.astype(np.int64).sum(axis=0) * scale).astype(np.float32)
        return self.const(f"{p}_Wq", wq), self.const(f"{p}_Wscale", scale), colsum

    def quantize_input(self, x: str, p: str, k: int) -> tuple[str, str, str]:
        """(Xq, per-token scale, per-token zp * scale).

        uint8 with a scale and a zero point per token: activations are far from centred per
        token (layer-norm outputs as much as GELU outputs), and a symmetric scale around a
        fixed zero point measured worse (minimum cosine 0.969 vs 0.990 on MiniLM with every
        projection quantized). The rows are quantized by one per-axis ``QuantizeLinear`` on the
        [tokens, K] view (no copy), so X is read twice (reductions, quantization) instead of
        once per element-wise op. The zero point's share, zp * s * colsum(W), is taken off
        after the product: ``MatMulIntegerToFloat`` takes no zero point per row."""
        import numpy as np

        eps = self.const("per_token_eps", np.array(_EPS, dtype=np.float32))
        flat = self.const("per_token_flat", np.array([-1], dtype=np.int64))
        rows = self.const(f"per_token_rows_{k}", np.array([-1, k], dtype=np.int64))
        zero = self.const("per_token_zero", np.array(0.0, dtype=np.float32))
        lo = self.op("Min", [self.reduce("ReduceMin", x, f"{p}_min"), zero], f"{p}_lo")
        hi = self.op("Max", [self.reduce("ReduceMax", x, f"{p}_max"), zero], f"{p}_hi")
        span = self.op("Max", [self.op("Sub", [hi, lo], f"{p}_span"), eps], f"{p}_span_eps")
        s = self.op("Div", [span, self.const("per_token_255", np.array(255.0, np.float32))],
                    f"{p}_s")
        zp_f = self.op("Round", [self.op("Neg", [self.op("Div", [lo, s], f"{p}_lo_s")],
                                         f"{p}_neg")], f"{p}_zp_f")
        zp_row = self.op("Cast", [zp_f], f"{p}_zp_u8", to=2)  # TensorProto.UINT8
        xq_rows = self.op("QuantizeLinear", [self.op("Reshape", [x, rows], f"{p}_x_rows"),
                                              self.op("Reshape", [s, flat], f"{p}_s_flat"),
                                              self.op("Reshape", [zp_row, flat], f"{p}_zp_flat")],
                          f"{p}_xq_rows", axis=0)
        xq = self.op("Reshape", [xq_rows, self.op("Shape", [x], f"{p}_x_shape")], f"{p}_xq")
        return xq, s, self.op("Mul", [zp_f, s], f"{p}_zp_s")

    def product(self, xq: str, s: str, shift: str, wq: str, wscale: str, colsum, p: str,
                out: str) -> str:
        acc = self.op("MatMulIntegerToFloat", [xq, wq, s, wscale], f"{p}_acc",
                      domain="com.microsoft")
        correction = self.op("Mul", [shift, self.const(f"{p}_Wcolsum", colsum)], f"{p}_shift")
        return self.op("Sub", [acc, correction], out)

    # -- the pass -------------------------------------------------------------------------

    def run(self) -> None:
        from onnx import helper

        for node in self.graph.node:
            if node.op_type == "MatMul" and self.matmul(node):
                continue
            if node.op_type in ("MatMul", "Attention"):
                self.kept[node.op_type] = self.kept.get(node.op_type, 0) + 1
            self.nodes.append(node)
        if self.quantized and not any(o.domain == "com.microsoft" for o in self.model.opset_import):
            self.model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        # fp32 weights that were replaced by their int8 copies go (unless something else uses them)
        used = {n for node in self.nodes for n in node.input}
        kept = [i for i in self.graph.initializer if i.name in used]
        kept_names = {i.name for i in kept}
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept + [i for i in self.new_inits
                                              if i.name in used and i.name not in kept_names])
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)
        # Shapes recorded for the fp32 graph's intermediate tensors do not hold any more.
        del self.graph.value_info[:]

    def matmul(self, node) -> bool:
        w = self.weight(node.input[1]) if len(node.input) == 2 else None
        if w is None:
            return False
        p = _prefix(node)
        x = node.input[0]
        # Q, K and V (unfused attention, O1) read the same input: quantize it once
        if x not in self.quantized_inputs:
            self.quantized_inputs[x] = self.quantize_input(x, p, w.shape[0])
        xq, s, shift = self.quantized_inputs[x]
        wq, wscale, colsum = self.int8_weight(p, w)
        self.product(xq, s, shift, wq, wscale, colsum, p, node.output[0])
        self.quantized["MatMul"] = self.quantized.get("MatMul", 0) + 1
        return True


def _prefix(node) -> str:
    return (node.name or node.output[0]).replace("/", "_").strip("_")
