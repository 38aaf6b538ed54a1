"""INT8 that pays on the CPU it runs on: the int8-static recipe search (real quantization, real
onnxruntime timing), int8-dynamic's quick probe on Conv graphs, the CPU-flag reading and comparison
the deploy report uses, and the flags the optimizer and the inference service report."""
# ruff: noqa: F401, F811 - the session fixtures are imported from optimizer_fixtures and used as arguments

from __future__ import annotations

import math
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from optimizer_fixtures import digits, optimizer_server, put

from modelport import cpuinfo, media
from modelport.runtime.artifacts import download_to_file, upload_requests
from modelport.v1 import artifacts_pb2_grpc, optimizer_pb2, optimizer_pb2_grpc
from optimizer_svc import int8_search as IS
from optimizer_svc import measure as M
from optimizer_svc.onnx_techniques import Recipe, output_tail, qdq_activations_to_uint8

VNNI = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"]
AVX2 = ["sse4_2", "avx", "avx2", "fma"]
ARM = ["asimd", "asimddp"]


# ---- pure logic --------------------------------------------------------------------------------
def test_recipe_order_follows_the_cpu_and_the_pinned_options():
    vnni = IS.recipe_order(VNNI)
    assert [r.key for r in vnni] == ["u8s8-pc-qdq-minmax", "u8s8-pc-qoperator-minmax", "s8s8-pc-qdq-minmax",
                                     "u8s8-pt-qdq-minmax"]
    avx2 = IS.recipe_order(AVX2)  # no VNNI: 7-bit weights first, the full-range U8S8 measured last
    assert avx2[0].key == "u8s8-pc-qdq-minmax+rr" and avx2[-1].key == "u8s8-pc-qdq-minmax"
    assert IS.recipe_order(ARM)[0].key == "s8s8-pc-qdq-minmax"
    assert [r.key for r in IS.recipe_order(VNNI, IS.Pins(types="s8s8", method="entropy"))] == ["s8s8-pc-qdq-entropy"]
    assert [r.key for r in IS.recipe_order(VNNI, IS.Pins(fmt="qoperator"))] == ["u8s8-pc-qoperator-minmax"]
    # a pinned combination outside the prior's list still gets its one recipe
    assert [r.key for r in IS.recipe_order(VNNI, IS.Pins(types="s8s8", per_channel="false"))] == \
        ["s8s8-pt-qdq-minmax"]
    r = Recipe(float_nodes=("n/Softmax",), float_ops=("Softmax",), reduce_range=True)
    assert r.key == "u8s8-pc-qdq-minmax+rr+float(Softmax)"
    assert r.details()["activation_type"] == "uint8" and r.details()["weight_type"] == "int8"
    assert r.details()["float_nodes"] == "n/Softmax" and "left in float: Softmax" in r.describe()


def test_cpu_flags_are_read_compared_and_carried_in_server_extensions():
    text = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni amx_int8 hypervisor\n"
    rel = cpuinfo.relevant_flags(cpuinfo.read_flags(text))
    assert rel == ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "amx_int8"]
    assert cpuinfo.read_flags("Features\t: fp asimd asimddp i8mm\n") == ["fp", "asimd", "asimddp", "i8mm"]
    assert cpuinfo.has_int8_dot(rel) and not cpuinfo.has_int8_dot(AVX2) and cpuinfo.has_int8_dot(ARM)
    assert cpuinfo.is_x86(AVX2) and not cpuinfo.is_x86(ARM)
    # only kernel-relevant flags count, in any order, as a list or a string
    assert cpuinfo.compare(" ".join(rel), list(reversed(rel)) + ["hypervisor"]) is None
    w = cpuinfo.compare(rel, AVX2)
    assert w.startswith("the inference service's CPU lacks avx512f, avx512_vnni, amx_int8 compared with")
    assert "INT8 speed-ups in particular depend on avx512_vnni, amx_int8" in w
    w = cpuinfo.compare("avx2 fma", "avx2 fma avx512f")
    assert "adds avx512f" in w and "lacks" not in w and "kernel choices, and so the ranking, can differ" in w
    entry = cpuinfo.extension_entry(rel)
    assert entry == "cpu_flags(sse4_2 avx avx2 fma avx512f avx512_vnni amx_int8)"
    assert cpuinfo.flags_from_extensions(["model_repository", entry]) == rel
    assert cpuinfo.flags_from_extensions(["model_repository(unload_dependents)"]) is None
    assert cpuinfo.serving_warning(" ".join(rel), ["statistics", entry]) is None
    assert "lacks avx512f" in cpuinfo.serving_warning(" ".join(rel), [cpuinfo.extension_entry(AVX2)])
    # an optimizer or a server that did not report flags: nothing to compare, no warning
    assert cpuinfo.serving_warning(None, [entry]) is None and cpuinfo.serving_warning("", [entry]) is None
    assert cpuinfo.serving_warning(" ".join(rel), ["statistics"]) is None


# ---- a model whose output layer is sensitive to quantization ------------------------------------
CLASSES = 100


def sensitive_classifier(path: Path) -> Path:
    """x -> MatMul(identity) -> Relu -> MatMul(0.1 I + noise) -> Softmax over 100 classes.

    The right class leads its logit by about 0.1, so the top-1 is unambiguous; but all 100
    probabilities lie near 0.01, within one step of an 8-bit softmax output (onnxruntime fixes its
    range to 0..1, step 1/255), so a quantized softmax ties them and loses the top-1 almost always.
    """
    rng = np.random.default_rng(0)
    w1 = np.eye(CLASSES, dtype=np.float32) + rng.normal(0, 0.01, (CLASSES, CLASSES)).astype(np.float32)
    w2 = 0.1 * np.eye(CLASSES, dtype=np.float32) + rng.normal(0, 0.005, (CLASSES, CLASSES)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="dense1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["logits"], name="dense2"),
             helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1)]
    g = helper.make_graph(nodes, "sensitive", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", CLASSES])],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", CLASSES])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def sensitive_inputs(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, CLASSES, n)
    return (np.eye(CLASSES, dtype=np.float32)[classes] + rng.uniform(0, 0.05, (n, CLASSES)).astype(np.float32))


def _evaluator(baseline: Path, x: dict[str, np.ndarray], labels: np.ndarray | None = None):
    """The job's way of scoring a candidate: latency paired with the baseline, quality = accuracy or agreement."""
    base = M.onnx_runner(baseline, ["CPUExecutionProvider"])
    reference = M.predict(base, x)

    def evaluate(path: Path) -> IS.Evaluation:
        m = M.measure(path, M.onnx_runner(path, ["CPUExecutionProvider"]), x, labels, reference, warmup=2,
                      repeats=12, batch_size=1, baseline_run=base)
        q = m.accuracy if labels is not None else m.agreement
        return IS.Evaluation(float(m.details["latency_ratio_paired"]), q, float(m.details["cosine"]))

    base_quality = M.accuracy(reference, labels) if labels is not None else 1.0
    return evaluate, base_quality


# ---- the search on real models -----------------------------------------------------------------
@pytest.mark.integration
def test_search_measures_recipes_in_prior_order_and_records_the_winner(digits, tmp_path):
    calib = {"image": np.load(digits.calib)["x"]}
    evaluate, base_acc = _evaluator(digits.onnx_path, {"image": digits.eval_x}, digits.eval_y)
    flags = cpuinfo.relevant_flags()
    res = IS.search(digits.onnx_path, tmp_path / "search", calib, 64, evaluate, base_acc, 0.02, budget_s=60)
    prior = IS.recipe_order(flags)
    assert res.trials[0].recipe == prior[0]  # the prior's first recipe is measured first
    assert {t.recipe.key for t in res.trials} >= {r.key for r in prior}  # 60 s cover them all on this tiny CNN
    assert all(t.ratio > 0 and not t.error for t in res.trials)
    best = res.best
    assert best.within and best.ratio == min(t.ratio for t in res.trials if t.within)
    kept = [p.name for p in (tmp_path / "search").glob("trial-*")]  # a folder per trial; losers removed
    assert best.path.exists() and kept == [best.path.parent.name]
    d = res.details()
    assert d["recipe"] == best.recipe.key and d["method"] == best.recipe.method
    assert d["cpu_flags"] == cpuinfo.format_flags(flags)
    assert d["recipe_choice"] == "fastest within the accuracy budget"
    assert d["recipes_tried"].count(": ") == len(res.trials) and prior[0].key + ": " in d["recipes_tried"]
    assert d["recipe_search"].startswith(f"{len(res.trials)} recipe(s) tried in ")
    m = onnx.load(str(best.path))
    assert sum(t.data_type == TensorProto.INT8 and len(t.dims) >= 2 for t in m.graph.initializer) == 4


@pytest.mark.integration
def test_a_zero_time_budget_measures_only_the_first_recipe(digits, tmp_path):
    calib = {"image": np.load(digits.calib)["x"]}
    evaluate, base_acc = _evaluator(digits.onnx_path, {"image": digits.eval_x}, digits.eval_y)
    res = IS.search(digits.onnx_path, tmp_path / "s", calib, 32, evaluate, base_acc, 0.02, budget_s=0,
                    flags=AVX2)
    assert [t.recipe.key for t in res.trials] == ["u8s8-pc-qdq-minmax+rr"]
    assert [r.key for r in res.untried] == [r.key for r in IS.recipe_order(AVX2)[1:]]
    assert res.details()["recipe_search"].endswith("; 4 left untried") and res.details()["reduce_range"] == "true"


@pytest.mark.integration
def test_recipes_a_quick_probe_shows_slower_than_the_best_are_not_measured(digits, tmp_path):
    calib = {"image": np.load(digits.calib)["x"]}
    evaluate, base_acc = _evaluator(digits.onnx_path, {"image": digits.eval_x}, digits.eval_y)
    probed = []

    def probe(path: Path) -> float:  # as if every later recipe ran 100x slower than the baseline
        probed.append(path.name)
        return 100.0

    res = IS.search(digits.onnx_path, tmp_path / "s", calib, 32, evaluate, base_acc, 0.02, budget_s=60,
                    flags=VNNI, probe=probe)
    first, *rest = res.trials
    assert first.within and not first.screened and res.best is first  # the first recipe is always measured
    assert rest and all(t.screened.startswith("screened out: a quick probe ran 100.00x") for t in rest)
    assert len(probed) == len(rest) and all(math.isnan(t.ratio) and t.path is None for t in rest)
    assert res.details()["recipes_tried"].count("screened out") == len(rest)


@pytest.mark.integration
def test_a_recipe_that_loses_accuracy_is_rejected_and_the_sensitive_layer_left_in_float(tmp_path):
    model = sensitive_classifier(tmp_path / "sensitive.onnx")
    assert output_tail(model) == ([("softmax", "Softmax")], [("dense2", "MatMul")])
    x = {"x": sensitive_inputs(200, seed=1)}
    evaluate, _ = _evaluator(model, x)
    res = IS.search(model, tmp_path / "s", {"x": sensitive_inputs(64, seed=2)}, 64, evaluate, 1.0, 0.01,
                    budget_s=120, flags=VNNI)
    first = res.trials[0]
    assert first.recipe.key == "u8s8-pc-qdq-minmax" and not first.within and first.drop > 0.5
    # the fix for the fastest rejected recipe comes next: the softmax left in float
    fix = res.trials[1]
    assert fix.recipe.key == "u8s8-pc-qdq-minmax+float(Softmax)" and fix.within and fix.fix_step == 0
    assert all(not t.within for t in res.trials if not t.recipe.float_ops)  # every quantized softmax failed
    best = res.best
    assert best.within and "Softmax" in best.recipe.float_ops
    d = res.details()
    assert "u8s8-pc-qdq-minmax: " in d["recipes_tried"] and "over the accuracy budget" in d["recipes_tried"]
    assert d["float_nodes"] == "softmax" and d["recipe_choice"] == "fastest within the accuracy budget"
    ops = [n.op_type for n in onnx.load(str(best.path)).graph.node]
    assert "Softmax" in ops and "QLinearSoftmax" not in ops and "QuantizeLinear" in ops


@pytest.mark.integration
def test_int8_activations_become_uint8_exactly(tmp_path):
    """The TFLite -> ONNX candidate's rewrite: int8 activation Q/DQ pairs shifted to uint8 give the same model."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = sensitive_classifier(tmp_path / "m.onnx")
    feeds = [{"x": sensitive_inputs(1, seed=i)} for i in range(16)]

    class Reader:
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    s8 = tmp_path / "s8.onnx"
    quantize_static(str(model), str(s8), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=["softmax"])
    n = qdq_activations_to_uint8(s8, tmp_path / "u8.onnx")
    m = onnx.load(str(tmp_path / "u8.onnx"))
    inits = {t.name: t for t in m.graph.initializer}
    q = [nd for nd in m.graph.node if nd.op_type == "QuantizeLinear"]
    assert n == len(q) > 0 and all(inits[nd.input[2]].data_type == TensorProto.UINT8 for nd in q)
    weights_dq = [nd for nd in m.graph.node if nd.op_type == "DequantizeLinear" and nd.input[0] in inits]
    assert weights_dq and all(inits[nd.input[2]].data_type == TensorProto.INT8 for nd in weights_dq)
    xs = {"x": sensitive_inputs(64, seed=5)}
    a = M.predict(M.onnx_runner(s8, ["CPUExecutionProvider"]), xs)[0]
    b = M.predict(M.onnx_runner(tmp_path / "u8.onnx", ["CPUExecutionProvider"]), xs)[0]
    np.testing.assert_allclose(a, b, atol=1e-6)


# ---- through the optimizer service -------------------------------------------------------------
@pytest.fixture(scope="module")
def channel(optimizer_server):
    from modelport.runtime.channels import channel_options

    ch = grpc.insecure_channel(optimizer_server.address, options=channel_options())
    yield ch
    ch.close()


def _optimize(channel, req) -> optimizer_pb2.OptimizeRequest:
    return list(optimizer_pb2_grpc.OptimizerStub(channel).Optimize(req, timeout=600))[-1].optimize_result


@pytest.mark.integration
def test_service_reports_the_recipe_the_rejections_and_the_cpu_flags(channel, optimizer_server, tmp_path):
    store = optimizer_server.service.store
    model = put(store, sensitive_classifier(tmp_path / "sensitive.onnx"), media.ONNX)
    np.savez(tmp_path / "calib.npz", x=sensitive_inputs(64, seed=2))
    np.savez(tmp_path / "eval.npz", x=sensitive_inputs(200, seed=1))
    req = optimizer_pb2.OptimizeRequest(model=model, techniques=["int8-static"],
                                        calibration_data=put(store, tmp_path / "calib.npz", media.NPZ),
                                        eval_data=put(store, tmp_path / "eval.npz", media.NPZ))
    req.options["int8-static.types"] = "u8s8"  # fewer recipes: the test is about the rejection
    req.options["int8-static.format"] = "qdq"
    res = _optimize(channel, req)
    here = cpuinfo.format_flags(cpuinfo.relevant_flags())
    assert res.baseline.details["cpu_flags"] == here
    (c,) = res.candidates
    assert c.technique == "int8-static" and c.chosen and c.within_budget and c.agreement >= 0.99
    assert c.details["cpu_flags"] == here
    assert c.details["recipe"].startswith("u8s8-") and c.details["recipe"].endswith("+float(Softmax)")
    assert c.details["activation_type"] == "uint8" and c.details["quant_format"] == "qdq"
    assert c.details["recipe_choice"] == "fastest within the accuracy budget"
    tried = c.details["recipes_tried"].split("; ")
    assert any(t.startswith("u8s8-pc-qdq-") and "+float" not in t and t.endswith("over the accuracy budget")
               for t in tried), tried
    path = tmp_path / "int8.onnx"
    download_to_file(artifacts_pb2_grpc.ArtifactsStub(channel), c.artifact.digest, path)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Softmax" in ops and "QuantizeLinear" in ops and "DequantizeLinear" in ops


@pytest.mark.integration
def test_auto_stops_dynamic_int8_of_a_conv_graph_after_a_quick_probe(channel, optimizer_server, digits):
    store = optimizer_server.service.store
    req = optimizer_pb2.OptimizeRequest(model=put(store, digits.onnx_path, media.ONNX), techniques=["auto"],
                                        calibration_data=put(store, digits.calib, media.NPZ),
                                        eval_data=put(store, digits.eval, media.NPZ))
    req.options["int8-dynamic.quick_stop"] = "0"  # stop after the probe whatever it measured
    res = _optimize(channel, req)
    table = {c.technique: c for c in res.candidates}
    dyn = table["int8-dynamic"]
    assert dyn.details["status"] == "stopped" and dyn.details["measurement"] == "quick" and not dyn.chosen
    assert dyn.note.startswith("measured quickly: ") and "over 3 interleaved runs" in dyn.note
    assert "2 convolution(s) became ConvInteger" in dyn.note and dyn.details["conv_integer_ops"] == "2"
    assert float(dyn.details["latency_ratio_quick"]) > 0 and dyn.latency_p50_ms > 0
    order = [c.technique for c in res.candidates]  # ranked after every fully measured candidate
    assert all(order.index("int8-dynamic") > order.index(t) for t in ("graph", "fp16", "int8-static"))
    assert not table["int8-static"].details.get("status") and "recipe" in table["int8-static"].details


@pytest.mark.integration
def test_a_tflite_int8_model_becomes_a_servable_onnx_with_the_baselines_names(digits, tmp_path):
    import keras
    import tensorflow as tf

    from optimizer_svc.keras_techniques import tflite_to_onnx

    model = keras.models.load_model(digits.keras_path)
    calib = np.load(digits.calib)["x"]
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(32))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    tfl = tmp_path / "int8.tflite"
    tfl.write_bytes(conv.convert())
    x = {"image": digits.eval_x}
    tfl_out = M.predict(M.tflite_runner(tfl, ["image"]), x)
    outs = {}
    for u8 in (False, True):
        out = tmp_path / f"int8-{u8}.onnx"
        d = tflite_to_onnx(tfl, out, digits.onnx_path, tmp_path / f"w{u8}", uint8_activations=u8)
        assert d["activations"].startswith("uint8" if u8 else "int8")
        m = onnx.load(str(out))
        assert [i.name for i in m.graph.input] == ["image"] and [o.name for o in m.graph.output] == \
            [o.name for o in onnx.load(str(digits.onnx_path)).graph.output]
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in m.graph.node}
        outs[u8] = M.predict(M.onnx_runner(out, ["CPUExecutionProvider"]), x)
        # the same integer model as TFLite runs: the same answers
        assert M.agreement(outs[u8], tfl_out) >= 0.98 and M.cosine(outs[u8], tfl_out) >= 0.999
    assert M.max_abs_diff(outs[True], outs[False]) <= 1e-2
