"""LLM generation: the KV-cache step served with continuous batching vs keras_hub ``generate()``.

For each model (random weights, built in the benchmark; presets cannot be downloaded here):
  * keras_hub ``generate()`` in TensorFlow in-process, greedy (what a Keras user has today), one
    prompt and four prompts in one batch;
  * a no-cache ONNX loop (the same exported step run over the whole prefix for every token);
  * the cached step in-process (one sequence), which must yield keras_hub's greedy tokens;
  * modelport's inference service in its own process, streaming over gRPC (``Client.generate``):
    tokens/s and time to first token at 1 and 4 concurrent generations;
  * weight-only INT8 / INT4 (MatMulNBits) of the step: tokens/s, memory, greedy agreement.
Every stage runs in its own subprocess (``--stage``), one multi-GB process at a time, and reports
its peak RSS.

    .venv/bin/python -m benchmarks.bench_llm                # GPT-2-small-shaped (124M)
    .venv/bin/python -m benchmarks.bench_llm --models gpt2-124m llama-1b
    .venv/bin/python -m benchmarks.bench_llm --quick        # a tiny GPT-2, seconds
    .venv/bin/python -m benchmarks.bench_llm --trained      # weight-only quality on a trained model (~1-2 min)

``--trained`` answers what random weights cannot: a random model's next-token logits are nearly flat,
so quantization noise flips its argmax far more often than in a trained model. It trains a small
GPT-2 (keras_hub, in TensorFlow, a few hundred steps) on a synthetic corpus with a known entropy
(a Markov chain: each token has 3 successors, probabilities 0.7 / 0.2 / 0.1), exports its KV-cache
step, quantizes it weight-only (INT8, INT4) and measures, on held-out sequences of the same chain,
perplexity, next-token accuracy and top-1 agreement with FP32, and greedy agreement with FP32's
greedy continuations; the same architecture untrained (random weights) side by side. Its own
section (``results/llm_trained.md``).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import common

PROMPT_TOKENS = 16
NEW_TOKENS = 64
CONCURRENT = 4

MODELS = {
    # GPT-2 small: 12 layers, 12 heads, hidden 768, 1024 positions, 50257 tokens (124M parameters).
    "gpt2-124m": {"family": "gpt2", "vocabulary_size": 50257, "num_layers": 12, "num_heads": 12, "hidden_dim": 768,
                  "intermediate_dim": 3072, "max_sequence_length": 1024},
    # Llama-shaped, about 1.1B parameters (TinyLlama's shape: GQA 32/4 heads, hidden 2048, 22 layers).
    "llama-1b": {"family": "llama", "vocabulary_size": 32000, "num_layers": 22, "num_query_heads": 32,
                 "num_key_value_heads": 4, "hidden_dim": 2048, "intermediate_dim": 5632},
    "gpt2-tiny": {"family": "gpt2", "vocabulary_size": 1000, "num_layers": 2, "num_heads": 2, "hidden_dim": 64,
                  "intermediate_dim": 128, "max_sequence_length": 256},
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prompts(vocab: int, count: int, seed: int = 0) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, vocab, PROMPT_TOKENS)] for _ in range(count)]


# ---- stages (each in its own process) -----------------------------------------------------------

def stage_keras(name: str, work: Path, new_tokens: int) -> dict:
    """Build the model, export the generation step, time keras_hub generate()."""
    import keras
    import keras_hub
    import numpy as np

    from modelport.conversion.llm_export import export_generation
    from modelport.generation_model import CONFIG_FILE, GenerationConfig

    spec = dict(MODELS[name])
    family = spec.pop("family")
    keras.utils.set_random_seed(0)
    t0 = time.perf_counter()
    if family == "gpt2":
        lm = keras_hub.models.GPT2CausalLM(backbone=keras_hub.models.GPT2Backbone(**spec), preprocessor=None)
    else:
        lm = keras_hub.models.LlamaCausalLM(backbone=keras_hub.models.LlamaBackbone(**spec), preprocessor=None)
    build_s = time.perf_counter() - t0
    params = int(lm.count_params())
    folder = work / name / "1"
    t0 = time.perf_counter()
    export_generation(lm, folder, external=True)
    export_s = time.perf_counter() - t0
    config = GenerationConfig.load(folder / CONFIG_FILE)
    config.max_context = PROMPT_TOKENS + new_tokens
    config.save(folder / CONFIG_FILE)

    lm.compile(sampler=keras_hub.samplers.GreedySampler())
    ps = prompts(spec["vocabulary_size"], CONCURRENT)
    length = PROMPT_TOKENS + new_tokens

    def run(batch: list[list[int]]) -> tuple[float, list[list[int]]]:
        ids = np.zeros((len(batch), length), "int32")
        mask = np.zeros((len(batch), length), bool)
        for i, p in enumerate(batch):
            ids[i, :len(p)] = p
            mask[i, :len(p)] = True
        t = time.perf_counter()
        out = lm.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)
        return time.perf_counter() - t, [[int(x) for x in row[PROMPT_TOKENS:]] for row in np.asarray(out["token_ids"])]

    first_s, _ = run(ps[:1])  # traces and compiles
    one = [run(ps[:1]) for _ in range(2)]
    one_s = min(s for s, _ in one)
    reference = one[0][1][0]
    run(ps)  # compile for batch 4
    four_s = min(run(ps)[0] for _ in range(2))
    return {"parameters": params, "build_s": build_s, "export_s": export_s, "compile_and_first_s": first_s,
            "keras_1_s": one_s, "keras_1_tokens_per_s": new_tokens / one_s,
            "keras_4_s": four_s, "keras_4_tokens_per_s": CONCURRENT * new_tokens / four_s,
            "reference": reference, "prompts": ps, "folder": str(folder), "peak_rss_mib": peak_rss_mib()}


def stage_onnx(folder: Path, ps: list[list[int]], new_tokens: int, reference: list[int]) -> dict:
    """In-process: the cached step (one sequence) and a no-cache loop over the same step."""
    import numpy as np

    from modelport.generation_model import StepModel, greedy_decode

    step = StepModel(folder)
    greedy_decode(step, ps[0], 2)
    rates = []
    tokens = []
    for _ in range(3):
        t = time.perf_counter()
        tokens = greedy_decode(step, ps[0], new_tokens)
        rates.append(new_tokens / (time.perf_counter() - t))

    def no_cache(n: int) -> tuple[float, list[int]]:
        seq, out = list(ps[0]), []
        t = time.perf_counter()
        for _ in range(n):
            cache = step.new_cache(max_batch=1, max_context=len(seq), initial=len(seq))
            logits = step.step(np.asarray([seq]), np.zeros(1, np.int32), cache)
            out.append(int(np.argmax(logits[0])))
            seq.append(out[-1])
        return n / (time.perf_counter() - t), out

    no_cache(2)
    nc_rate, nc_tokens = no_cache(new_tokens)
    return {"cached_tokens_per_s": max(rates), "no_cache_tokens_per_s": nc_rate,
            "greedy_equal_keras": tokens == reference, "no_cache_equal_keras": nc_tokens == reference,
            "tokens_compared": len(reference), "peak_rss_mib": peak_rss_mib()}


def stage_served(repo: Path, names: list[str], ps: list[list[int]], new_tokens: int, reference: list[int]) -> dict:
    """The inference service in its own process (every model of ``repo`` loaded); Client.generate from threads."""
    from modelport.client import Client

    proc, address = common.start_service_subprocess("inference_svc", "--repository", str(repo), timeout=900)
    try:
        sampler = common.RssSampler(proc.pid, interval=0.05).start()

        def one(name: str, prompt: list[int], out: dict) -> None:
            with Client(inference=address) as client:
                t0 = time.perf_counter()
                first = None
                got = []
                for token in client.generate(name, prompt, max_tokens=new_tokens, timeout=900):
                    first = first if first is not None else time.perf_counter() - t0
                    got.append(token)
                out.update(ttft=first, total=time.perf_counter() - t0, tokens=got)

        results = {}
        for name in names:
            one(name, ps[0], {})  # warm-up
            singles = []
            for _ in range(3):
                r: dict = {}
                one(name, ps[0], r)
                singles.append(r)
            rounds = []
            for _ in range(2):
                outs = [{} for _ in range(CONCURRENT)]
                threads = [threading.Thread(target=one, args=(name, ps[i], outs[i])) for i in range(CONCURRENT)]
                t0 = time.perf_counter()
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                rounds.append({"wall": time.perf_counter() - t0, "outs": outs})
            best = min(rounds, key=lambda r: r["wall"])
            single = min(singles, key=lambda r: r["total"])
            results[name] = {
                "served_1_tokens_per_s": new_tokens / single["total"],
                "served_1_ttft_ms": statistics.median(r["ttft"] for r in singles) * 1000,
                "served_1_equal_keras": single["tokens"] == reference,
                "served_4_tokens_per_s": CONCURRENT * new_tokens / best["wall"],
                "served_4_ttft_ms_median": statistics.median(o["ttft"] for o in best["outs"]) * 1000,
                "served_4_ttft_ms_max": max(o["ttft"] for o in best["outs"]) * 1000,
                "served_4_first_equal_keras": best["outs"][0]["tokens"] == reference,
            }
        sampler.stop()
        return {"models": results, "server_rss_peak_mib": sampler.peak / 2**20}
    finally:
        common.stop_service_subprocess(proc)


def stage_quant(folder: Path, out: Path, technique: str, ps: list[list[int]], new_tokens: int,
                reference: list[int]) -> dict:
    from modelport.generation_model import CONFIG_FILE, GenerationConfig
    from optimizer_svc.llm_techniques import BITS, measure, weight_only

    t0 = time.perf_counter()
    details = weight_only(folder, out, BITS[technique]) if technique != "fp32" else {}
    build_s = time.perf_counter() - t0
    if technique != "fp32":  # served too: the same limits as the FP32 model
        config = GenerationConfig.load(out / CONFIG_FILE)
        config.max_context = GenerationConfig.load(folder / CONFIG_FILE).max_context
        config.save(out / CONFIG_FILE)
    m = measure(out if technique != "fp32" else folder, ps[:2], new_tokens, repeats=2)
    return {"technique": technique, "build_s": build_s, "tokens_per_s": m.tokens_per_s, "ttft_ms": m.ttft_ms,
            "session_rss_mib": m.session_rss_bytes / 2**20, "size_mib": m.size_bytes / 2**20,
            "sequences": m.sequences, "details": details, "peak_rss_mib": peak_rss_mib()}


def stage_agreement(folder: Path, ps: list[list[int]], sequences: list[list[int]]) -> dict:
    """Teacher-forced agreement and perplexity of ``folder`` on the FP32 model's greedy continuations."""
    import math

    from modelport.generation_model import StepModel
    from optimizer_svc.llm_techniques import teacher_forced

    step = StepModel(folder)
    hits = total = 0
    nll = 0.0
    for p, ref in zip(ps, sequences, strict=False):
        h, n = teacher_forced(step, p, ref)
        hits, nll, total = hits + h, nll + n, total + len(ref)
    return {"agreement": hits / total, "perplexity": math.exp(nll / total), "peak_rss_mib": peak_rss_mib()}


# ---- weight-only quality on a trained model (--trained) -------------------------------------------

# A small GPT-2: 2 layers, 4 heads, hidden 128 (0.5M parameters; every MatMul's K is a multiple of 32).
TRAINED_MODEL = {"vocabulary_size": 256, "num_layers": 2, "num_heads": 4, "hidden_dim": 128,
                 "intermediate_dim": 512, "max_sequence_length": 128}
SUCCESSOR_PROBS = (0.7, 0.2, 0.1)  # each token's 3 successors in the synthetic corpus
TRAIN_SEQ = 64  # tokens per training / held-out sequence
HELD_OUT = 48  # held-out sequences
PROMPT_LEN = 8  # held-out: the first PROMPT_LEN tokens prompt, the rest are scored
GREEDY_TOKENS = 32
GREEDY_PROMPTS = 8


def markov_corpus(count: int, length: int, seed: int, vocab: int = TRAINED_MODEL["vocabulary_size"]):
    """``count`` sequences of a fixed Markov chain (the chain is the same for every seed): token t is followed
    by successors[t, j] with probability SUCCESSOR_PROBS[j]. Its entropy bounds the achievable perplexity."""
    import numpy as np

    table = np.stack([np.random.default_rng([1000, t]).permutation(vocab)[:len(SUCCESSOR_PROBS)]
                      for t in range(vocab)])
    rng = np.random.default_rng(seed)
    seqs = np.zeros((count, length), np.int32)
    seqs[:, 0] = rng.integers(0, vocab, count)
    choice = rng.choice(len(SUCCESSOR_PROBS), size=(count, length), p=SUCCESSOR_PROBS)
    for i in range(1, length):
        seqs[:, i] = table[seqs[:, i - 1], choice[:, i]]
    return seqs


def chain_perplexity() -> float:
    import math

    return math.exp(-sum(p * math.log(p) for p in SUCCESSOR_PROBS))


def stage_train(work: Path, steps: int, batch: int) -> dict:
    """Build the GPT-2, export it untrained, train it on the chain, export it trained; keras_hub greedy refs."""
    import keras
    import keras_hub
    import numpy as np

    from modelport.conversion.llm_export import export_generation, keras_greedy

    keras.utils.set_random_seed(0)
    lm = keras_hub.models.GPT2CausalLM(backbone=keras_hub.models.GPT2Backbone(**TRAINED_MODEL), preprocessor=None)
    export_generation(lm, work / "random" / "1")
    held = markov_corpus(HELD_OUT, TRAIN_SEQ, seed=2)
    prompts_ = [[int(t) for t in row[:PROMPT_LEN]] for row in held[:GREEDY_PROMPTS]]
    random_ref = [keras_greedy(lm, p, GREEDY_TOKENS) for p in prompts_]

    data = markov_corpus(steps * batch, TRAIN_SEQ + 1, seed=1)
    x = {"token_ids": data[:, :-1], "padding_mask": np.ones((len(data), TRAIN_SEQ), bool)}
    lm.compile(optimizer=keras.optimizers.Adam(learning_rate=2e-3),
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), weighted_metrics=[])
    t0 = time.perf_counter()
    hist = lm.fit(x, data[:, 1:], batch_size=batch, epochs=1, verbose=0, shuffle=False)
    train_s = time.perf_counter() - t0
    ev = lm.evaluate({"token_ids": held[:, :-1], "padding_mask": np.ones((len(held), TRAIN_SEQ - 1), bool)},
                     held[:, 1:], verbose=0, return_dict=True)
    export_generation(lm, work / "trained" / "1")
    trained_ref = [keras_greedy(lm, p, GREEDY_TOKENS) for p in prompts_]
    return {"parameters": int(lm.count_params()), "steps": steps, "batch": batch, "train_s": train_s,
            "train_loss_last": float(hist.history["loss"][-1]), "keras_held_out_loss": float(ev["loss"]),
            "held_out": held.tolist(), "prompts": prompts_,
            "keras_greedy": {"random": random_ref, "trained": trained_ref}, "peak_rss_mib": peak_rss_mib()}


def _scores(step, seq: list[int]):
    """Teacher-forced over ``seq[PROMPT_LEN:]``: (argmax ids, log-probs of the true tokens, top-1 minus top-2 logit)."""
    import numpy as np

    from optimizer_svc.llm_techniques import _log_softmax, teacher_forced_logits

    prompt, rest = seq[:PROMPT_LEN], seq[PROMPT_LEN:]
    top, logp, gaps = [], [], []
    for logits, token in zip(teacher_forced_logits(step, prompt, rest), rest, strict=True):
        top.append(int(np.argmax(logits)))
        logp.append(float(_log_softmax(logits)[token]))
        two = np.partition(logits, -2)[-2:]
        gaps.append(float(two[1] - two[0]))
    return top, logp, gaps


def stage_quality(folder: Path, out: Path, technique: str, held_out: list[list[int]], prompts_: list[list[int]],
                  fp32: dict | None) -> dict:
    """Quantize (unless fp32) and score the step on the held-out sequences; vs the FP32 step's results if given."""
    import math

    import numpy as np

    from modelport.generation_model import StepModel, greedy_decode
    from optimizer_svc.llm_techniques import BITS, folder_bytes, teacher_forced, weight_only

    if technique != "fp32":
        weight_only(folder, out, BITS[technique])
        folder = out
    step = StepModel(folder)
    tops, logps, gaps = [], [], []
    for seq in held_out:
        t, lp, g = _scores(step, seq)
        tops.append(t)
        logps += lp
        gaps += g
    truth = [seq[PROMPT_LEN:] for seq in held_out]
    greedy = [greedy_decode(step, p, GREEDY_TOKENS) for p in prompts_]
    r = {"technique": technique, "size_bytes": folder_bytes(folder), "tops": tops, "greedy": greedy,
         "perplexity": math.exp(-float(np.mean(logps))),
         "accuracy": float(np.mean([a == b for t, s in zip(tops, truth, strict=True) for a, b in zip(t, s, strict=True)])),
         "gap_median": float(np.median(gaps)), "peak_rss_mib": peak_rss_mib()}
    if fp32 is not None:
        pairs = [(a, b) for t, f in zip(tops, fp32["tops"], strict=True) for a, b in zip(t, f, strict=True)]
        r["top1_agreement"] = float(np.mean([a == b for a, b in pairs]))
        hits = sum(teacher_forced(step, p, ref)[0] for p, ref in zip(prompts_, fp32["greedy"], strict=True))
        r["greedy_agreement"] = hits / sum(len(ref) for ref in fp32["greedy"])
        r["greedy_identical"] = sum(g == f for g, f in zip(greedy, fp32["greedy"], strict=True))
    return r


def bench_trained(work: Path, steps: int, batch: int) -> dict:
    print(f"trained GPT-2 ({steps} steps of {batch} sequences):", flush=True)
    t = run_stage("train", {"work": str(work), "steps": steps, "batch": batch})
    variants = {}
    for model in ("random", "trained"):
        folder = work / model / "1"
        fp = run_stage("quality", {"folder": str(folder), "out": str(folder), "technique": "fp32",
                                   "held_out": t["held_out"], "prompts": t["prompts"], "fp32": None})
        fp["greedy_equal_keras"] = fp["greedy"] == t["keras_greedy"][model]
        rows = [fp]
        for tech in ("int8-weight-only", "int4-weight-only"):
            rows.append(run_stage("quality", {"folder": str(folder), "out": str(work / f"{model}-{tech}" / "1"),
                                              "technique": tech, "held_out": t["held_out"], "prompts": t["prompts"],
                                              "fp32": fp}))
        for r in rows:
            r.pop("tops", None)
        variants[model] = rows
    t.pop("held_out")
    return {"train": t, "variants": variants}


def markdown_trained(res: dict, cpu: dict, command: str, load) -> str:
    t = res["train"]
    rows = []
    for model, variants in res["variants"].items():
        fp = variants[0]
        for r in variants:
            q = r["technique"] != "fp32"
            rows.append([model, r["technique"], f"{r['size_bytes'] / 1024:.0f}", f"{r['perplexity']:.3f}",
                         f"{r['accuracy']:.3f}", f"{r['top1_agreement']:.3f}" if q else "—",
                         f"{r['greedy_agreement']:.3f}" if q else "—",
                         f"{r['greedy_identical']} / {len(r['greedy'])}" if q else
                         ("= keras_hub generate()" if fp["greedy_equal_keras"] else "≠ keras_hub generate() (!)"),
                         f"{r['gap_median']:.2f}"])
    return "\n".join([
        "## LLM weight-only quantization on a trained model",
        "",
        f"The LLM section's weight-only agreements come from random weights, whose next-token logits are nearly flat. "
        f"Here the same question on a model with peaked logits: a GPT-2 ({t['parameters'] / 1e6:.2f}M parameters: "
        f"{TRAINED_MODEL['num_layers']} layers, {TRAINED_MODEL['num_heads']} heads, hidden {TRAINED_MODEL['hidden_dim']}, "
        f"vocabulary {TRAINED_MODEL['vocabulary_size']}) built with keras_hub and trained in TensorFlow for "
        f"{t['steps']} steps of {t['batch']} sequences ({t['train_s']:.0f} s) on a synthetic corpus: a fixed Markov "
        f"chain where each token has {len(SUCCESSOR_PROBS)} successors with probabilities "
        f"{' / '.join(str(p) for p in SUCCESSOR_PROBS)}, so the best achievable perplexity is "
        f"{chain_perplexity():.3f} (uniform guessing: {TRAINED_MODEL['vocabulary_size']}). Training loss "
        f"{t['train_loss_last']:.3f} (mean over the run); Keras's own held-out loss {t['keras_held_out_loss']:.3f} "
        f"(perplexity {__import__('math').exp(t['keras_held_out_loss']):.3f}). The *random* rows are the same "
        "architecture untrained (its initial weights). Each is exported as the KV-cache step "
        "(`modelport.conversion.llm_export`) and quantized with the optimizer's `int8-weight-only` / "
        "`int4-weight-only` (MatMulNBits, block 32, symmetric, int8 compute).",
        "",
        f"Scored on {HELD_OUT} held-out sequences of the chain ({TRAIN_SEQ} tokens: {PROMPT_LEN} prompt, "
        f"{TRAIN_SEQ - PROMPT_LEN} scored teacher-forced): *perplexity* and *next-token accuracy* against the data; "
        "*top-1 agreement* = the candidate's argmax equals FP32's at each position. On FP32's greedy continuations "
        f"({GREEDY_TOKENS} tokens after {len(t['prompts'])} prompts): *greedy agreement* (teacher-forced top-1, as in "
        "the LLM section's table) and how many of the candidate's own greedy continuations are identical to FP32's. "
        "*Logit gap*: the median difference between the step's top two logits at the scored positions (how peaked "
        "the predictions are).",
        "",
        common.markdown_table(["weights", "step", "size KiB", "held-out perplexity", "next-token accuracy",
                               "top-1 agreement with FP32", "greedy agreement with FP32",
                               "greedy continuations identical to FP32's", "median top-1 − top-2 logit"], rows),
        "",
        f"CPU: {cpu['model']}, {cpu['usable_cores']} usable cores; SIMD flags: {', '.join(cpu['simd_flags'])}. "
        f"Load average (1/5/15 min) at the end: {load}.",
        "",
        "Command:",
        "",
        f"    {command}",
    ])


# ---- the driver -----------------------------------------------------------------------------------

def run_stage(stage: str, payload: dict, timeout: float = 3600) -> dict:
    """Run one stage in a fresh interpreter (its memory is returned when it exits)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(payload, f)
        path = f.name
    out = path + ".out"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(common.REPO_ROOT)}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "benchmarks.bench_llm", "--stage", stage, path, out],
                       cwd=common.REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"stage {stage} failed:\n{p.stderr[-3000:]}")
    result = json.loads(Path(out).read_text())
    result["stage_s"] = time.perf_counter() - t0
    print(f"  {stage}: {time.perf_counter() - t0:.0f}s, peak {result.get('peak_rss_mib', 0):.0f} MiB", flush=True)
    return result


def bench_model(name: str, work: Path, new_tokens: int, quant: bool) -> dict:
    print(f"{name}:", flush=True)
    repo = work / "repo"
    k = run_stage("keras", {"name": name, "work": str(repo), "new_tokens": new_tokens})
    folder, ps, ref = Path(k["folder"]), k["prompts"], k["reference"]
    o = run_stage("onnx", {"folder": str(folder), "prompts": ps, "new_tokens": new_tokens, "reference": ref})
    res = {"name": name, "keras": k, "onnx": o, "quant": []}
    res["roofline"] = run_stage("roofline", {"folder": str(folder), "prompts": ps, "new_tokens": new_tokens})
    served = [name]
    if quant:
        base = run_stage("quant", {"folder": str(folder), "out": str(folder), "technique": "fp32", "prompts": ps,
                                   "new_tokens": new_tokens, "reference": ref})
        res["quant"].append(base)
        for tech in ("int8-weight-only", "int4-weight-only"):
            out = repo / f"{name}-{tech}" / "1"
            q = run_stage("quant", {"folder": str(folder), "out": str(out), "technique": tech, "prompts": ps,
                                    "new_tokens": new_tokens, "reference": ref})
            a = run_stage("agreement", {"folder": str(out), "prompts": ps[:2], "sequences": base["sequences"]})
            q["agreement"], q["perplexity"] = a["agreement"], a["perplexity"]
            res["quant"].append(q)
            served.append(f"{name}-{tech}")
    res["served"] = run_stage("served", {"repo": str(repo), "names": served, "prompts": ps, "new_tokens": new_tokens,
                                         "reference": ref})
    shutil.rmtree(repo, ignore_errors=True)  # the next model's service loads only its own
    return res


def markdown(results: list[dict], cpu: dict) -> str:
    rows, goals, quant_rows, mem_rows, roof_rows = [], [], [], [], []
    for r in results:
        k, o, sv = r["keras"], r["onnx"], r["served"]
        label = f"{r['name']} ({k['parameters'] / 1e6:.0f}M)"
        kr = k["keras_1_tokens_per_s"]
        for model, s in sv["models"].items():
            variant = model[len(r["name"]):].lstrip("-") or "fp32"
            rows.append([label, variant, f"{s['served_1_tokens_per_s']:.1f}",
                         common.fmt_ratio(s["served_1_tokens_per_s"] / kr), f"{s['served_1_ttft_ms']:.0f}",
                         f"{s['served_4_tokens_per_s']:.1f}",
                         common.fmt_ratio(s["served_4_tokens_per_s"] / s["served_1_tokens_per_s"]),
                         f"{s['served_4_ttft_ms_median']:.0f} / {s['served_4_ttft_ms_max']:.0f}",
                         "yes" if s["served_1_equal_keras"] and s["served_4_first_equal_keras"] else "no"])
        fp = sv["models"][r["name"]]
        best = max(sv["models"].values(), key=lambda s: s["served_1_tokens_per_s"])
        best_name = next(n for n, s in sv["models"].items() if s is best)
        g1, g1_best = fp["served_1_tokens_per_s"] / kr, best["served_1_tokens_per_s"] / kr
        g4 = fp["served_4_tokens_per_s"] / fp["served_1_tokens_per_s"]
        goals.append([label, f"{common.fmt_ratio(g1)} FP32 ({'met' if g1 >= 3 else 'NOT met'}); "
                             f"{common.fmt_ratio(g1_best)} {best_name[len(r['name']):].lstrip('-') or 'fp32'} "
                             f"({'met' if g1_best >= 3 else 'NOT met'})",
                      f"{common.fmt_ratio(g4)} FP32 ({'met' if g4 >= 2 else 'NOT met'})",
                      f"{kr:.1f} / {k['keras_4_tokens_per_s']:.1f}",
                      f"{o['no_cache_tokens_per_s']:.1f} / {o['cached_tokens_per_s']:.1f} "
                      f"({common.fmt_ratio(o['cached_tokens_per_s'] / o['no_cache_tokens_per_s'])})",
                      "yes" if o["greedy_equal_keras"] and fp["served_1_equal_keras"] else "NO"])
        rf = r.get("roofline")
        if rf:
            top = ", ".join(f"{op} {share * 100:.1f} %" for op, share in rf["top_ops"][:4])
            roof_rows.append([label, f"{rf['weight_bytes'] / 2**20:.0f}", f"{rf['step_tokens_per_s']:.1f}",
                              f"{rf['step_gb_s']:.1f}", f"{rf['gemv_gb_s_best']:.1f}",
                              f"{rf['roofline_tokens_per_s']:.1f}", f"{rf['step_vs_roofline'] * 100:.0f} %",
                              common.fmt_ratio(rf["roofline_tokens_per_s"] / kr),
                              f"{rf['matmul_share'] * 100:.1f} % ({top})",
                              f"{rf['outside_run_ms_per_step']:.2f} ms "
                              f"({rf['outside_run_ms_per_step'] * rf['step_tokens_per_s'] / 10:.1f} %)"])
        mem_rows.append([label, f"{k['peak_rss_mib']:.0f}", f"{o['peak_rss_mib']:.0f}",
                         f"{sv['server_rss_peak_mib']:.0f}", f"{k['export_s']:.0f}"])
        for q in r["quant"]:
            base = r["quant"][0]
            quant_rows.append([label, q["technique"], f"{q['size_mib']:.0f}", f"{q['tokens_per_s']:.1f}",
                               common.fmt_ratio(q["tokens_per_s"] / base["tokens_per_s"]), f"{q['peak_rss_mib']:.0f}",
                               f"{q.get('agreement', 1.0):.3f}",
                               f"{q['perplexity']:.0f}" if "perplexity" in q else "—"])
    parts = [
        "## LLM generation: KV-cache step, streaming and continuous batching vs keras_hub generate()",
        "",
        f"Causal LMs with random weights built from keras_hub configs, exported with `modelport.conversion.llm_export` "
        f"(one ONNX step with a KV cache, weights as external data). Prompts of {PROMPT_TOKENS} random token ids, "
        f"{', '.join(str(r['new_tokens']) + ' (' + r['name'] + ')' for r in results)} new tokens, greedy. The baseline, *keras_hub generate()*, is TensorFlow in-process (XLA-compiled, "
        "timed after a warm-up call; 4 prompts = one static batch of 4). *Served* is the inference service in its own "
        "process streaming over gRPC (`Client.generate` = `ModelStreamInfer`, one response per token): 1 generation, "
        "then 4 concurrent generations from 4 client threads, which share decode steps (continuous batching). Time to "
        "first token (TTFT) is measured by the client. The weight-only variants are the optimizer's `int8-weight-only` / "
        "`int4-weight-only` (MatMulNBits, block 32, symmetric, int8 compute). Best of 3 (1 generation) and of 2 "
        "(4 concurrent) runs.",
        "",
        common.markdown_table(["model", "served weights", "served tok/s (1)", "vs keras generate() (1)",
                               "TTFT ms (1)", "served tok/s (4 concurrent, total)", "4 vs 1", "TTFT ms (4: median / max)",
                               "greedy tokens = keras_hub's"], rows),
        "",
        "### Goals",
        "",
        common.markdown_table(["model", "served vs keras generate(), 1 generation (goal ≥ 3×)",
                               "4 concurrent vs 1, total tok/s (goal ≥ 2×)", "keras generate() tok/s: 1 / batch 4",
                               "in-process ONNX tok/s, 1 sequence: no-cache / cached step",
                               "greedy tokens = keras_hub's (all generated)"], goals),
        "",
        "### Peak memory per stage (RSS, MiB)",
        "",
        common.markdown_table(["model", "keras build + export + generate()", "ONNX step in-process",
                               "inference service (all variants loaded, serving)", "export seconds"], mem_rows),
    ]
    if roof_rows:
        parts += ["", "### Where the FP32 step's time goes, and this machine's ceiling", "",
                  "One decode step streams every weight from memory once for one token per sequence (each MatMul is "
                  "a matrix-vector product), so one sequence's tokens/s can not pass *memory bandwidth / weight "
                  "bytes*. Measured in the same run (`benchmarks/llm_roofline.py`): the step in-process "
                  "(`StepModel`, onnxruntime's default threads, no spinning) and the bandwidth it implies; "
                  "onnxruntime's own FP32 MatMul on matrix-vector products over 512 MiB of weights (far past the "
                  "caches) with the same session settings: the ceiling; onnxruntime's profile of the decode steps "
                  "(share of kernel time per op type); the time per step spent outside `session.run` (building "
                  "feeds, writing the new keys/values into the preallocated cache, argmax): the most IO binding "
                  "could remove, since the cache is already fed as zero-copy views of preallocated arrays.", "",
                  common.markdown_table(["model", "weights MiB", "step tok/s", "step GB/s", "MatMul GEMV GB/s "
                                         "(ceiling)", "ceiling tok/s", "step / ceiling", "ceiling vs keras generate()",
                                         "MatMul share of kernel time (top ops)",
                                         "outside session.run per step (share)"], roof_rows)]
    if quant_rows:
        parts += ["", "### Weight-only quantization of the step, in-process (one sequence)", "",
                  "Agreement: the candidate predicts each next token of the FP32 model's greedy continuations "
                  "(teacher-forced top-1); perplexity on those continuations. The weights are random: a random "
                  "model's next-token logits are nearly flat (tiny gaps between the top ids), so the quantization "
                  "noise flips the argmax far more often than in a trained model; these agreements are a pessimistic "
                  "bound and say nothing about a trained model's quality (a trained model's are in *LLM weight-only "
                  "quantization on a trained model* below: `--trained`). Stage peak RSS includes the quantization "
                  "itself (it holds the FP32 weights).", "",
                  common.markdown_table(["model", "technique", "size MiB", "tok/s", "vs FP32", "stage peak RSS MiB",
                                         "greedy agreement", "perplexity"], quant_rows)]
    parts += ["", f"CPU: {cpu['model']}, {cpu['usable_cores']} usable cores; SIMD flags: {', '.join(cpu['simd_flags'])}. "
              "The machine was shared with other jobs, so absolute rates vary from run to run (±50 % seen); the "
              "ratios compare figures of the same run. Load average (1/5/15 min) at the end of each model's run: "
              + "; ".join(f"{r['name']} {r.get('load_average')}" for r in results) + ".",
              "", "Commands:", ""]
    parts += [f"    {cmd}" for cmd in dict.fromkeys(r["command"] for r in results)]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--stage":
        stage, path, out = argv[1], argv[2], argv[3]
        p = json.loads(Path(path).read_text())
        if stage == "keras":
            r = stage_keras(p["name"], Path(p["work"]), p["new_tokens"])
        elif stage == "onnx":
            r = stage_onnx(Path(p["folder"]), p["prompts"], p["new_tokens"], p["reference"])
        elif stage == "served":
            r = stage_served(Path(p["repo"]), p["names"], p["prompts"], p["new_tokens"], p["reference"])
        elif stage == "quant":
            r = stage_quant(Path(p["folder"]), Path(p["out"]), p["technique"], p["prompts"], p["new_tokens"],
                            p["reference"])
        elif stage == "train":
            r = stage_train(Path(p["work"]), p["steps"], p["batch"])
        elif stage == "quality":
            r = stage_quality(Path(p["folder"]), Path(p["out"]), p["technique"], p["held_out"], p["prompts"],
                              p["fp32"])
        elif stage == "roofline":
            from benchmarks.llm_roofline import roofline

            r = {**roofline(Path(p["folder"]), p["prompts"][0], p["new_tokens"]), "peak_rss_mib": peak_rss_mib()}
        else:
            r = stage_agreement(Path(p["folder"]), p["prompts"], p["sequences"])
        Path(out).write_text(json.dumps(r))
        return 0
    parser = common.bench_args("LLM generation: KV-cache step served vs keras_hub generate()")
    parser.add_argument("--models", nargs="+", default=["gpt2-124m"], choices=sorted(MODELS))
    parser.add_argument("--no-quant", action="store_true", help="skip the weight-only quantization stages")
    parser.add_argument("--tokens", type=int, default=NEW_TOKENS, help="new tokens per generation")
    parser.add_argument("--rebuild", action="store_true", help="rewrite results/llm.md from results/llm.json")
    parser.add_argument("--trained", action="store_true",
                        help="only the weight-only quality of a trained small GPT-2 (its own section, llm_trained)")
    parser.add_argument("--train-steps", type=int, default=400, help="training steps for --trained")
    args = parser.parse_args(argv)
    if args.trained:
        with tempfile.TemporaryDirectory(prefix="bench-llm-trained-") as work:
            res = bench_trained(Path(work), args.train_steps, batch=32)
        load, cpu = common.load_average(), common.cpu_info()
        command = common.command_line()
        common.write_section("llm_trained", markdown_trained(res, cpu, command, load),
                             {**res, "command": command, "load_average": load})
        for model, rows in res["variants"].items():
            for r in rows:
                print(f"{model} {r['technique']}: perplexity {r['perplexity']:.3f}, accuracy {r['accuracy']:.3f}, "
                      f"top-1 agreement {r.get('top1_agreement', 1.0):.3f}, greedy agreement "
                      f"{r.get('greedy_agreement', 1.0):.3f}", flush=True)
        return 0
    if args.rebuild:
        data = json.loads((common.RESULTS_DIR / "llm.json").read_text())
        common.write_section("llm", markdown(data["results"], data["system"]["cpu"]), data)
        return 0
    models = ["gpt2-tiny"] if args.quick else args.models
    new_tokens = 16 if args.quick else args.tokens
    command = common.command_line()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as work:
        for name in models:
            results.append(bench_model(name, Path(work), new_tokens, quant=not args.no_quant))
    load, cpu = common.load_average(), common.cpu_info()
    for r in results:
        r["keras"].pop("prompts", None)
        r.update(command=command, new_tokens=new_tokens, load_average=load)
    # Results of models measured in earlier runs stay (one model per run keeps one multi-GB process at a time).
    previous = common.RESULTS_DIR / "llm.json"
    if previous.is_file() and not args.quick:
        kept = [r for r in json.loads(previous.read_text()).get("results", [])
                if r["name"] not in {m["name"] for m in results} and r["name"] in MODELS and r["name"] != "gpt2-tiny"]
        results = kept + results
    common.write_section("llm", markdown(results, cpu), {"results": results})
    for r in results:
        for model, sv in r["served"]["models"].items():
            print(f"{model}: keras {r['keras']['keras_1_tokens_per_s']:.1f} tok/s, served 1 "
                  f"{sv['served_1_tokens_per_s']:.1f} tok/s, served 4 {sv['served_4_tokens_per_s']:.1f} tok/s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
