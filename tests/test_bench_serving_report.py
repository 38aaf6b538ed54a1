"""bench_serving's concurrency-1 bound: the floor's transport plus one in-process run, one after the other."""

import pytest

from benchmarks.bench_serving import c1_bound


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
