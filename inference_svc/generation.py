"""Token generation for decoupled (streaming) models: continuous batching over a KV-cache step.

``GenerationEngine`` serves one generation model version (a folder with ``model.onnx`` and
``generation.json``, see ``modelport.generation_model``). One engine thread runs the decode loop:
a request that arrives is prefilled into a free cache row (one step over its prompt), streams its
first token, and from the next step on decodes together with every running sequence, each at its
own position (one step = one token for every sequence); a sequence that ends or is cancelled frees
its row at once, and the last row moves into the hole so the running rows stay a contiguous prefix
of the cache. Tokens reach the asyncio side through ``Generation``, an async iterator per request.

Sampling follows TensorRT-LLM's runtime parameters: greedy when ``top_k`` is 0 or 1 and ``top_p`` is 0
(or ``temperature`` is 0); otherwise softmax(logits / temperature) restricted to the ``top_k`` most
likely ids and the smallest set whose probability reaches ``top_p``, drawn from a generator seeded
with ``random_seed``. Generation ends after ``max_tokens`` tokens, or when ``end_id`` is drawn (the
end token itself is not streamed). Never imports grpc.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from inference_svc.metrics import VersionMetrics
from inference_svc.stats import VersionStats
from modelport.errors import Internal, InvalidArgument, ModelportError, ResourceExhausted, Unavailable
from modelport.generation_model import StepModel

log = logging.getLogger("modelport.inference.generation")

DEFAULT_MAX_QUEUE = 256


@dataclass
class GenerationParams:
    """One generation request, decoded from its tensors (TensorRT-LLM names in ``protocol``)."""

    prompt: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    seed: int = 0
    end_id: int | None = None
    streaming: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or (self.top_k in (0, 1) and self.top_p <= 0)


@dataclass
class Event:
    """What a request receives: a token, or the end (``reason``: length, end_id, cancelled, error)."""

    token: int | None = None
    end: str = ""
    error: ModelportError | None = None


class Generation:
    """The asyncio side of one request: ``async for event in generation``; ``cancel()`` stops it."""

    def __init__(self, params: GenerationParams, loop: asyncio.AbstractEventLoop):
        self.params = params
        self.loop = loop
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.started = time.perf_counter_ns()
        self.tokens = 0

    def cancel(self) -> None:
        """Stop generating for this request; its cache row is freed at the engine's next step."""
        self.cancelled.set()

    def _post(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
            self.cancelled.set()

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        try:
            while True:
                event = await self.events.get()
                if event.error is not None:
                    raise event.error
                yield event
                if event.end:
                    return
        finally:
            self.cancel()  # a consumer that stops listening (stream cancelled) stops the generation


@dataclass
class _Sequence:
    request: Generation
    rng: np.random.Generator | None
    cached: int = 0  # tokens in its cache row
    last: int = 0  # the token to feed next
    produced: int = 0
    finished: str = ""
    history: list[int] = field(default_factory=list)


def sample(logits: np.ndarray, params: GenerationParams, rng: np.random.Generator | None) -> int:
    """The next token id from one row of logits (see the module doc for the rules)."""
    if params.greedy or rng is None:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / max(params.temperature, 1e-6)
    ids = np.arange(scaled.size)
    if params.top_k > 1 and params.top_k < scaled.size:
        keep = np.argpartition(-scaled, params.top_k - 1)[:params.top_k]
        ids, scaled = keep, scaled[keep]
    order = np.argsort(-scaled)
    ids, scaled = ids[order], scaled[order]
    probs = np.exp(scaled - scaled[0])
    probs /= probs.sum()
    if 0 < params.top_p < 1:
        cut = int(np.searchsorted(np.cumsum(probs), params.top_p)) + 1
        ids, probs = ids[:cut], probs[:cut] / probs[:cut].sum()
    return int(ids[rng.choice(ids.size, p=probs)])


class GenerationEngine:
    """Continuous batching for one generation model version (see the module doc)."""

    def __init__(self, step: StepModel, name: str, version: str, max_batch: int = 0, max_queue: int = DEFAULT_MAX_QUEUE):
        self.step = step
        self.config = step.config
        self.name, self.version = name, version
        self.max_batch = max_batch or self.config.max_batch
        self.max_context = self.config.context_limit
        self.max_queue = max_queue
        self.cache = step.new_cache(max_batch=self.max_batch, max_context=self.max_context)
        self.metrics = VersionMetrics(name, version)
        self.stats = VersionStats()
        self.steps = 0  # decode steps run (each one token for every running sequence)
        self.batch_tokens = 0  # tokens those steps produced
        self._inbox: collections.deque[Generation] = collections.deque()
        self._active: list[_Sequence] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"generate-{name}-{version}", daemon=True)
        self.metrics.watch_pending(lambda: len(self._inbox))

    @classmethod
    def open(cls, folder, name: str, version: str, threads: int = 0, providers: list[str] | None = None,
             session_options=None) -> GenerationEngine:
        return cls(StepModel(folder, threads=threads, providers=providers, session_options=session_options),
                   name, version)

    # --- the Scheduler surface the model manager drives ----------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def inflight(self) -> int:
        return len(self._inbox) + len(self._active)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until no request is queued or running (a version being retired takes no new ones)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.inflight:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 30)
        self.metrics.close()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no request is queued or running (True), or ``timeout`` seconds pass (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._inbox and not self._active, timeout)

    def warmup(self) -> None:
        """One prefill and one decode step on a scratch row (builds onnxruntime's kernels before READY)."""
        cache = self.step.new_cache(max_batch=1, max_context=4, initial=4)
        self.step.step(np.zeros((1, 2), np.int32), np.zeros(1, np.int32), cache)
        self.step.step(np.zeros((1, 1), np.int32), np.full(1, 2, np.int32), cache)

    # --- requests -------------------------------------------------------------------------------

    def check(self, params: GenerationParams) -> None:
        """InvalidArgument for a request this model cannot run (empty or out-of-range ids, too long)."""
        vocab = self.config.vocabulary_size
        if not params.prompt:
            raise InvalidArgument("input_ids is empty; give at least one token id", {"tensor": "input_ids"})
        bad = [t for t in params.prompt if not 0 <= t < vocab]
        if bad:
            raise InvalidArgument(f"input_ids holds {bad[0]}, outside the model's vocabulary [0, {vocab})",
                                  {"tensor": "input_ids"})
        if params.max_tokens < 1:
            raise InvalidArgument(f"request_output_len must be >= 1, got {params.max_tokens}",
                                  {"tensor": "request_output_len"})
        total = len(params.prompt) + params.max_tokens
        if total > self.max_context:
            raise InvalidArgument(
                f"the prompt ({len(params.prompt)} tokens) plus request_output_len ({params.max_tokens}) is {total} "
                f"tokens, over the model's max_context of {self.max_context}; shorten the prompt or ask for fewer "
                "tokens" + ("" if self.config.max_positions else " (or raise max_context in generation.json)"),
                {"tensor": "request_output_len"})
        if params.temperature < 0 or params.top_k < 0 or not 0 <= params.top_p <= 1:
            raise InvalidArgument("temperature and runtime_top_k must be >= 0 and runtime_top_p in [0, 1]")
        if params.end_id is not None and not 0 <= params.end_id < vocab:
            raise InvalidArgument(f"end_id {params.end_id} is outside the vocabulary [0, {vocab})",
                                  {"tensor": "end_id"})

    def submit(self, params: GenerationParams) -> Generation:
        """Queue a request (it joins the running batch at the engine's next step)."""
        self.check(params)
        generation = Generation(params, asyncio.get_running_loop())
        with self._cond:
            if self._stopping:
                raise Unavailable(f"model '{self.name}' version {self.version} is unloading; retry shortly")
            if len(self._inbox) >= self.max_queue:
                raise ResourceExhausted(f"model '{self.name}' has {len(self._inbox)} generation requests waiting "
                                        f"(limit {self.max_queue}); retry later")
            self._inbox.append(generation)
            self._cond.notify_all()
        return generation

    # --- the engine thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._inbox and not self._active:
                    self._cond.wait()
                if self._stopping:
                    pending = list(self._inbox)
                    self._inbox.clear()
                    break
            try:
                self._admit()
                self._finish()
                if self._active:
                    self._decode()
                    self._finish()
            except Exception as exc:  # noqa: BLE001 - a failing step fails the sequences it ran
                log.error("generation step of %s failed", self.name, exc_info=exc)
                error = Internal(f"generation failed in model '{self.name}': {type(exc).__name__}")
                for seq in self._active:
                    seq.request._post(Event(error=error))
                    self._record(seq, "INTERNAL")
                with self._cond:
                    self._active.clear()
                    self._cond.notify_all()
        for seq in self._active:
            seq.request._post(Event(error=Unavailable(f"model '{self.name}' was unloaded")))
        for request in pending:
            request._post(Event(error=Unavailable(f"model '{self.name}' was unloaded")))
        self._active.clear()

    def _admit(self) -> None:
        """Prefill waiting requests into free rows, one prompt per step. A request leaves the inbox only
        once it runs, so ``wait_idle`` never sees it in neither place."""
        while len(self._active) < self.max_batch:
            with self._cond:
                if not self._inbox:
                    return
                request = self._inbox[0]  # only this thread removes from the left
                dropped = request.cancelled.is_set()
                if dropped:
                    self._inbox.popleft()
                    self._cond.notify_all()
            if dropped:
                self._record(_Sequence(request, None), "CANCELLED")
                continue
            params = request.params
            seq = _Sequence(request, None if params.greedy else np.random.default_rng(params.seed),
                            history=list(params.prompt))
            row = len(self._active)
            try:
                logits = self.step.step(np.asarray([params.prompt], np.int32), np.zeros(1, np.int32), self.cache,
                                        start=row)
            finally:
                with self._cond:
                    self._inbox.popleft()
                    self._active.append(seq)
            seq.cached = len(params.prompt)
            self._emit(seq, sample(logits[0], params, seq.rng))

    def _decode(self) -> None:
        active = self._active
        ids = np.asarray([[s.last] for s in active], np.int32)
        past = np.asarray([s.cached for s in active], np.int32)
        logits = self.step.step(ids, past, self.cache)
        self.steps += 1
        self.batch_tokens += len(active)
        for row, seq in enumerate(active):
            seq.cached += 1
            if not seq.finished:
                self._emit(seq, sample(logits[row], seq.request.params, seq.rng))

    def _emit(self, seq: _Sequence, token: int) -> None:
        params = seq.request.params
        if seq.request.cancelled.is_set():
            seq.finished = "cancelled"
            return
        if params.end_id is not None and token == params.end_id:
            seq.finished = "end_id"
            return
        seq.last = token
        seq.produced += 1
        seq.request.tokens += 1
        seq.history.append(token)
        final = seq.produced >= params.max_tokens
        if final:
            seq.finished = "length"
        seq.request._post(Event(token=token, end=seq.finished))

    def _finish(self) -> None:
        """Free the rows of finished and cancelled sequences (the last row moves into each hole)."""
        for row in range(len(self._active) - 1, -1, -1):
            seq = self._active[row]
            if seq.request.cancelled.is_set() and not seq.finished:
                seq.finished = "cancelled"
            if not seq.finished:
                continue
            last = len(self._active) - 1
            if row != last:
                self.cache.move(last, row)
                self._active[row] = self._active[last]
            with self._cond:
                self._active.pop()
                self._cond.notify_all()
            if seq.finished == "end_id":
                seq.request._post(Event(end="end_id"))
            self._record(seq, "CANCELLED" if seq.finished == "cancelled" else "OK")

    def _record(self, seq: _Sequence, status: str) -> None:
        total = time.perf_counter_ns() - seq.request.started
        self.stats.record_request(status == "OK", total)
        self.metrics.request(status, total / 1e9)
