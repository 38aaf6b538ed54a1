"""Weight-only quantization of generation models (INT8, INT4 block-wise) and how they are measured.

A generation model is a folder (``model.onnx`` step + ``generation.json``, see
``modelport.generation_model``). ``weight_only`` first folds the step's weight-only subgraphs with
onnxruntime's basic (portable) constant folding, so every projection reads a plain 2-D initializer
(keras_hub's EinsumDense kernels arrive as Reshape(weight), a tied LM head as Transpose(embedding)),
then onnxruntime's ``MatMulNBitsQuantizer`` turns each such MatMul into ``MatMulNBits`` with
``bits``-bit weights in blocks of ``block_size`` along K (one scale, and a zero point when
asymmetric, per block). Activations stay float32: weight-only quantization trades memory traffic,
what a decode step is bound by, for a dequantize inside the kernel.

``measure`` decodes with the step at one sequence: tokens/s and time to first token, the memory
the session holds, and against the FP32 model's greedy continuations of the same prompts:
teacher-forced top-1 agreement (the candidate predicts each next token of the FP32 sequence),
the free-running greedy prefix it reproduces, and its perplexity on those sequences. Numpy and
onnxruntime only; never grpc or TensorFlow.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelport.errors import FailedPrecondition, InvalidArgument
from modelport.formats import MAX_SNIFF_MEMBERS
from modelport.generation_model import (
    CONFIG_FILE,
    DATA_FILE,
    MODEL_FILE,
    GenerationConfig,
    StepModel,
    greedy_decode,
)

log = logging.getLogger("modelport.optimizer.llm")

BITS = {"int8-weight-only": 8, "int4-weight-only": 4}
EXTERNAL_FROM = 256 << 20  # write external data from this many bytes of initializers


def is_generation_archive(path: Path) -> bool:
    """A tar artifact holding a generation folder (model.onnx + generation.json)."""
    try:
        with open(path, "rb") as f:
            head = f.read(262)
        if len(head) < 262 or head[257:262] != b"ustar":
            return False
        names: set[str] = set()
        with tarfile.open(path, "r:*") as tar:  # header by header, at most MAX_SNIFF_MEMBERS (no header bomb)
            for _ in range(MAX_SNIFF_MEMBERS):
                if (m := tar.next()) is None:
                    break
                names.add(Path(m.name).name)
                tar.members = []
        return CONFIG_FILE in names and MODEL_FILE in names
    except (OSError, tarfile.TarError):
        return False


def generation_root(folder: Path) -> Path:
    """The folder inside an unpacked archive that holds generation.json."""
    if (folder / CONFIG_FILE).is_file():
        return folder
    found = sorted(folder.rglob(CONFIG_FILE))
    if not found:
        raise InvalidArgument(f"the archive holds no {CONFIG_FILE}; it is not a generation model")
    return found[0].parent


def _initializer_bytes(model) -> int:
    total = 0
    for t in model.graph.initializer:
        if t.data_location == t.EXTERNAL:
            total += int(next((e.value for e in t.external_data if e.key == "length"), "0"))
        else:
            total += len(t.raw_data)
    return total


def _save(model, folder: Path, external: bool) -> None:
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    (folder / DATA_FILE).unlink(missing_ok=True)
    if external:
        onnx.save_model(model, str(folder / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_FILE, size_threshold=1024)
    else:
        onnx.save_model(model, str(folder / MODEL_FILE))


def fold_weights(src: Path, out: Path) -> None:
    """onnxruntime basic optimization (constant folding, no hardware-specific fusions) saved offline."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(out / MODEL_FILE)
    so.log_severity_level = 3
    out.mkdir(parents=True, exist_ok=True)
    if (src / DATA_FILE).exists():
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", DATA_FILE)
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src / MODEL_FILE), sess_options=so, providers=["CPUExecutionProvider"])


def weight_only(src: Path, out: Path, bits: int, block_size: int = 32, symmetric: bool = True,
                accuracy_level: int = 4) -> dict[str, str]:
    """A weight-only quantized copy of the generation folder ``src`` in ``out``; returns report details.

    ``accuracy_level`` is MatMulNBits' compute type: 4 = int8 activations (quantized per block at run time;
    onnxruntime's fast CPU path: 8-bit weights at level 0 measured ~13x slower than at 4), 1 = float32.
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if bits not in (4, 8):
        raise InvalidArgument(f"weight-only quantization takes 4 or 8 bits, got {bits}")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise InvalidArgument(f"accuracy_level must be 0..4 (MatMulNBits compute type), got {accuracy_level}")
    if block_size < 16 or block_size & (block_size - 1):
        raise InvalidArgument(f"block_size must be a power of two >= 16, got {block_size}")
    folded = out.parent / (out.name + "-folded")
    fold_weights(src, folded)
    model = onnx.load(str(folded / MODEL_FILE))
    before = _initializer_bytes(model)
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    inits = {t.name: t for t in model.graph.initializer}
    eligible = [n.name for n in matmuls if len(n.input) > 1 and n.input[1] in inits and len(inits[n.input[1]].dims) == 2]
    if not eligible:
        raise FailedPrecondition("the step has no MatMul with a 2-D constant weight to quantize")
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=symmetric,
                                     accuracy_level=accuracy_level or None, op_types_to_quantize=("MatMul",))
    quantizer.process()
    quantized = quantizer.model.model
    del model
    shutil.rmtree(folded, ignore_errors=True)
    after = _initializer_bytes(quantized)
    n_q = sum(1 for n in quantized.graph.node if n.op_type == "MatMulNBits")
    _save(quantized, out, external=after >= EXTERNAL_FROM)
    config = GenerationConfig.load(src / CONFIG_FILE)
    config.external_data = (out / DATA_FILE).exists()
    config.extra = {**config.extra, "quantization": {"method": "MatMulNBits", "bits": bits, "block_size": block_size,
                                                     "symmetric": symmetric, "accuracy_level": accuracy_level,
                                                     "matmuls": n_q}}
    config.save(out / CONFIG_FILE)
    return {"bits": str(bits), "block_size": str(block_size), "symmetric": str(symmetric).lower(),
            "accuracy_level": str(accuracy_level),
            "matmuls_quantized": f"{n_q}/{len(eligible)}", "weight_bytes_before": str(before),
            "weight_bytes_after": str(after)}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class GenerationMeasurement:
    tokens_per_s: float
    ms_per_token: float
    ttft_ms: float
    session_rss_bytes: int
    size_bytes: int
    sequences: list[list[int]]  # greedy continuation of each prompt
    agreement: float = 1.0  # teacher-forced top-1 agreement with the reference continuations
    prefix_match: float = 1.0  # mean fraction of each reference continuation reproduced before diverging
    perplexity: float = math.nan  # on the reference continuations

    def details(self) -> dict[str, str]:
        return {"tokens_per_s": f"{self.tokens_per_s:.1f}", "ms_per_token": f"{self.ms_per_token:.3f}",
                "ttft_ms": f"{self.ttft_ms:.2f}", "session_rss_mb": f"{self.session_rss_bytes / 2**20:.1f}",
                "greedy_agreement_teacher_forced": f"{self.agreement:.4f}",
                "greedy_prefix_match": f"{self.prefix_match:.4f}", "perplexity_on_fp32_greedy": f"{self.perplexity:.3f}"}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - math.log(np.exp(x - m).sum())


def teacher_forced_logits(step: StepModel, prompt: list[int], continuation: list[int]) -> Iterator[np.ndarray]:
    """The logits ``step`` predicts each token of ``continuation`` with, the true tokens fed back (one step each)."""
    cache = step.new_cache(max_batch=1, max_context=len(prompt) + len(continuation))
    logits = step.step(np.asarray([prompt]), np.zeros(1, np.int32), cache)[0]
    length = len(prompt)
    for i, token in enumerate(continuation):
        yield logits
        if i + 1 < len(continuation):
            logits = step.step(np.asarray([[token]]), np.asarray([length], np.int32), cache)[0]
            length += 1


def teacher_forced(step: StepModel, prompt: list[int], continuation: list[int]) -> tuple[int, float]:
    """(top-1 hits, summed negative log-likelihood) of ``step`` predicting each token of ``continuation``."""
    hits, nll = 0, 0.0
    for logits, token in zip(teacher_forced_logits(step, prompt, continuation), continuation, strict=True):
        hits += int(np.argmax(logits) == token)
        nll -= _log_softmax(logits)[token]
    return hits, nll


def measure(folder: Path, prompts: list[list[int]], new_tokens: int, reference: list[list[int]] | None = None,
            threads: int = 0, repeats: int = 1) -> GenerationMeasurement:
    """Decode each prompt greedily at one sequence; compare with ``reference`` continuations if given."""
    rss0 = _rss()
    step = StepModel(folder, threads=threads)
    greedy_decode(step, prompts[0], 2)  # warm-up
    rss1 = _rss()
    best_rate, best_ttft = 0.0, math.inf
    sequences: list[list[int]] = []
    for _ in range(max(1, repeats)):
        sequences, decode_s, decode_tokens, ttft = [], 0.0, 0, []
        for prompt in prompts:
            cache = step.new_cache(max_batch=1, max_context=len(prompt) + new_tokens)
            t0 = time.perf_counter()
            logits = step.step(np.asarray([prompt]), np.zeros(1, np.int32), cache)
            t1 = time.perf_counter()
            ttft.append(t1 - t0)
            out, length = [int(np.argmax(logits[0]))], len(prompt)
            while len(out) < new_tokens:
                logits = step.step(np.asarray([[out[-1]]]), np.asarray([length], np.int32), cache)
                length += 1
                out.append(int(np.argmax(logits[0])))
            decode_s += time.perf_counter() - t1
            decode_tokens += new_tokens - 1
            sequences.append(out)
        rate = decode_tokens / decode_s if decode_s else 0.0
        best_rate = max(best_rate, rate)
        best_ttft = min(best_ttft, float(np.median(ttft)))
    m = GenerationMeasurement(tokens_per_s=best_rate, ms_per_token=1000.0 / best_rate if best_rate else math.nan,
                              ttft_ms=best_ttft * 1000.0, session_rss_bytes=max(0, rss1 - rss0),
                              size_bytes=folder_bytes(folder), sequences=sequences)
    if reference is not None:
        hits = total = 0
        nll = 0.0
        prefix = []
        for prompt, ref, got in zip(prompts, reference, sequences, strict=True):
            h, n = teacher_forced(step, prompt, ref)
            hits, nll, total = hits + h, nll + n, total + len(ref)
            same = next((i for i, (a, b) in enumerate(zip(ref, got, strict=True)) if a != b), len(ref))
            prefix.append(same / len(ref))
        m.agreement = hits / total
        m.prefix_match = float(np.mean(prefix))
        m.perplexity = math.exp(nll / total)
    return m


def prompts_for(config: GenerationConfig, count: int = 4, length: int = 8, seed: int = 0) -> list[list[int]]:
    """Held-out prompts of random token ids (the same for the baseline and every candidate)."""
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, config.vocabulary_size, length)] for _ in range(count)]


def describe(folder: Path) -> str:
    return json.dumps(json.loads((folder / CONFIG_FILE).read_text()).get("extra", {}))
