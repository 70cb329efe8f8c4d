"""int8 for encoder graphs: int8 weights per output channel, uint8 activations per token.

Why not ONNX Runtime's dynamic quantizer alone (``quantize_dynamic`` / optimum's
``ORTQuantizer``): it computes one activation scale per tensor, that is per *batch*. Measured on
the real all-MiniLM-L6-v2 (O2 graph, 61 varied sentences, cosine of the pooled embedding against
fp32; see docs/onnx.md):

==========================================================  ======  ======
quantization (cosine int8 vs fp32)                          mean    min
==========================================================  ======  ======
ORT dynamic, per-tensor weights (the first wave)            0.9456  0.7485
ORT dynamic, per-channel weights                            0.9900  0.9489
ORT dynamic, per-channel, MatMul + Attention, no Gather     0.9901  0.9532
ORT dynamic, per-channel, only the FFN up-projections       0.9962  0.9692
this module: per-token activations, MatMul (Attention fp32)  0.9986  0.9895
==========================================================  ======  ======

The loss is in the activations, not the weights (weights alone, fake-quantized: min 0.9946).
BERT-style encoders carry a few huge values: in all-MiniLM-L6-v2 hidden channel 99 of the [CLS]
token reaches 28 at the input of every FFN up-projection, where the median channel is under 1, so
one scale per tensor leaves the other tokens of a short sentence a handful of levels ("Thanks!"
is the worst sentence of the set). No single node is to blame (excluding any one MatMul moves the
minimum by at most 0.01), so excluding nodes cannot reach the floor while keeping the speed; one
scale per token confines the outlier to its own row. It also makes a text's int8 answer
independent of what else is in its batch: a per-tensor scale depends on the loudest neighbour.

ONNX has no per-token dynamic quantization operator, so each ``MatMul`` with a constant weight
``W[K, N]`` becomes a few standard ops around ORT's ``MatMulIntegerToFloat`` (u8 x s8, the VNNI
kernel), which takes a scale per row::

    symmetric (inputs from LayerNorm etc.):  s = max|X| / 127 per token, Xq = X / s + 128
    asymmetric (after GELU/ReLU, skewed):    s = (max - min) / 255,       Xq = (X - min) / s
    Y = MatMulIntegerToFloat(Xq, Wq, s, w_scale[, 128]) [+ min * colsum(W)]

with ``Wq = round(W / w_scale)`` symmetric int8 per output column. The fused ``Attention`` nodes
(query/key/value projections) stay fp32: rewritten into per-token int8 projections plus
``MultiHeadAttention`` they lowered the minimum to 0.987 (symmetric 0.975) and were no faster
here, because the extra element-wise passes cost what the int8 product saves.
"""

from __future__ import annotations

from pathlib import Path

METHOD = "per-token-activations"
ASYMMETRIC_AFTER = {"Gelu", "BiasGelu", "FastGelu", "Relu", "QuickGelu"}
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
            "activations": "uint8, dynamic, per token (asymmetric after GELU/ReLU, "
                           "symmetric elsewhere)",
            "quantized": dict(sorted(rewrite.quantized.items())),
            "kept_fp32": dict(sorted(rewrite.kept.items()))}


class _Rewrite:
    def __init__(self, model):
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.inits = {i.name: i for i in self.graph.initializer}
        self.producers = {out: n.op_type for n in self.graph.node for out in n.output}
        self.uses: dict[str, int] = {}
        for node in self.graph.node:
            for name in node.input:
                self.uses[name] = self.uses.get(name, 0) + 1
        self.nodes: list = []
        self.new_inits: list = []
        self.quantized: dict[str, int] = {}
        self.kept: dict[str, int] = {}
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

    def quantize_input(self, x: str, p: str, asymmetric: bool) -> tuple[str, str, str | None, str | None]:
        """(Xq, per-token scale, zero point for MatMulIntegerToFloat, per-token lo or None)."""
        import numpy as np

        zero = self.const("per_token_zero", np.array(0.0, dtype=np.float32))
        eps = self.const("per_token_eps", np.array(_EPS, dtype=np.float32))
        one = self.const("per_token_one", np.array(1.0, dtype=np.float32))
        if asymmetric:
            # GELU/ReLU outputs are skewed positive: a zero point per token keeps all 256 levels
            # for the range the values take. Quantized as (x - lo) / s, so the zero point's
            # share, lo * colsum(W), is added back after the integer product.
            lo = self.op("Min", [self.reduce("ReduceMin", x, f"{p}_min"), zero], f"{p}_lo")
            hi = self.op("Max", [self.reduce("ReduceMax", x, f"{p}_max"), zero], f"{p}_hi")
            span = self.op("Max", [self.op("Sub", [hi, lo], f"{p}_span"), eps], f"{p}_span_eps")
            s = self.op("Div", [span, self.const("per_token_255", np.array(255.0, np.float32))],
                        f"{p}_s")
            shifted = self.op("Sub", [x, lo], f"{p}_x_lo")
            u8_zero = self.const("per_token_u8_0", np.array(0, dtype=np.uint8))
            zp = None
        else:
            # Symmetric around the fixed zero point 128: nothing to correct after the product,
            # and MatMulIntegerToFloat takes the scalar zero point.
            amax = self.reduce("ReduceMax", self.op("Abs", [x], f"{p}_abs"), f"{p}_amax")
            s = self.op("Div", [self.op("Max", [amax, eps], f"{p}_amax_eps"),
                                self.const("per_token_127", np.array(127.0, np.float32))],
                        f"{p}_s")
            shifted, lo = x, None
            u8_zero = zp = self.const("per_token_u8_128", np.array(128, dtype=np.uint8))
        scaled = self.op("Mul", [shifted, self.op("Reciprocal", [s], f"{p}_inv_s")], f"{p}_x_n")
        xq = self.op("QuantizeLinear", [scaled, one, u8_zero], f"{p}_xq")
        return xq, s, zp, lo

    def product(self, xq: str, s: str, zp: str | None, lo: str | None, wq: str, wscale: str,
                colsum, p: str, out: str) -> str:
        inputs = [xq, wq, s, wscale] + ([zp] if zp else [])
        if lo is None:
            return self.op("MatMulIntegerToFloat", inputs, out, domain="com.microsoft")
        acc = self.op("MatMulIntegerToFloat", inputs, f"{p}_acc", domain="com.microsoft")
        shift = self.op("Mul", [lo, self.const(f"{p}_Wcolsum", colsum)], f"{p}_shift")
        return self.op("Add", [acc, shift], out)

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
        replaced = {n for node in self.nodes for n in node.input}
        kept = [i for i in self.graph.initializer if i.name in replaced]
        kept_names = {i.name for i in kept}
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept + [i for i in self.new_inits
                                              if i.name in replaced and i.name not in kept_names])
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
        asym = self.producers.get(x) in ASYMMETRIC_AFTER
        xq, s, zp, lo = self.quantize_input(x, p, asym)
        wq, wscale, colsum = self.int8_weight(p, w)
        self.product(xq, s, zp, lo, wq, wscale, colsum, p, node.output[0])
        self.quantized["MatMul"] = self.quantized.get("MatMul", 0) + 1
        return True


def _prefix(node) -> str:
    return (node.name or node.output[0]).replace("/", "_").strip("_")
