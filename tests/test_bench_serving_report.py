"""bench_serving's concurrency-1 bound: the floor's transport plus one in-process run, one after the other."""

import pytest

from benchmarks.bench_serving import c1_bound, cpu_budget


def _data(floor: float, run: float, **servers: float) -> dict:
    runs = {"floor": {"1": {"calls_per_s": floor}}}
    runs.update({name: {"1": {"calls_per_s": rate}} for name, rate in servers.items()})
    return {"runs": runs, "in_process_c1": {"calls_per_s": run}}


def test_bound_adds_the_floors_transport_and_one_run():
    # 2 ms of transport + 5 ms of run: 7 ms per request.
    assert c1_bound(_data(500.0, 200.0, kserve=110.0, modelport=107.0)) == pytest.approx(1000 / 7)


def test_the_floor_itself_is_not_held_to_the_bound():
    # The do-nothing floor never runs the model: it answers far faster than the bound by design, and that must not
    # void the bound (it did: MobileNetV2's bound was reported "not valid" in every run).
    assert c1_bound(_data(459.0, 177.0, kserve=110.0, modelport=107.0)) == pytest.approx(1 / (1 / 459 + 1 / 177))


def test_a_server_above_the_bound_voids_it():
    # The bound did not hold in this run (load slowed the in-process run): it is not reported.
    assert c1_bound(_data(500.0, 200.0, kserve=110.0, modelport=160.0)) is None


def test_no_bound_without_the_floor_or_the_run():
    assert c1_bound({"runs": {"modelport": {"1": {"calls_per_s": 100.0}}}, "in_process_c1": {"calls_per_s": 200.0}}) \
        is None
    assert c1_bound(_data(500.0, 0.0, modelport=100.0)) is None


def _cells(client_ms: float, floor_server_ms: float) -> dict:
    return {"runs": {"floor": {"8": {"calls_per_s": 900.0, "server_cpu_ms_per_call": floor_server_ms}},
                     "modelport": {"8": {"calls_per_s": 280.0, "client_cpu_ms_per_call": client_ms}}},
            "item_cpu_ms": {"batch1": 4.8, "batch8": 5.2}}


def test_cpu_budget_divides_the_cores_by_a_requests_least_cpu():
    # 2 cores / (1.0 ms client + 0.6 ms floor server + 4.8 ms, the cheaper run) = 312.5 req/s
    assert cpu_budget(_cells(1.0, 0.6), 8, 2) == pytest.approx(2000 / 6.4)
    d = _cells(1.0, 0.6)
    d["item_cpu_ms"] = {"batch1": 4.8, "batch8": 4.0}  # batching pays: the budget counts the batched run
    assert cpu_budget(d, 8, 2) == pytest.approx(2000 / 5.6)


def test_no_cpu_budget_without_the_floor_modelport_or_the_run():
    d = _cells(1.0, 0.6)
    assert cpu_budget(d, 32, 2) is None  # no cells at that concurrency
    d["item_cpu_ms"] = {}
    assert cpu_budget(d, 8, 2) is None
    del d["runs"]["floor"]
    assert cpu_budget({**d, "item_cpu_ms": {"batch1": 1.0}}, 8, 2) is None
