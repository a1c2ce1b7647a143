"""The centralized baselines (FedAvg, FedProx, FedAdam) in a live job: real Peers over the
in-memory transport, plans signed and built as the platform builds them (peers.star)."""

import asyncio
import logging
from dataclasses import replace

import pytest
import torch

from peers.data import load_local_data
from peers.evidence import score_from_evidence, scores_ppm
from peers.plans import round_plans
from peers.protocol import NO_WEIGHTS_BEFORE_DEADLINE, JobConfig, ProtocolError, decode, encode
from peers.simulate import SimConfig, run_simulation
from peers.topology import build
from peers.wire.format import pack_state, sha256_hex
from tests.federation import BASE_CONFIG, run_federation

N, ROUNDS = 4, 3


def by_round(reports, r):
    return {rep["node_id"]: rep for rep in reports if rep["round"] == r}


def accuracies(reports, r):
    return [rep["accuracy"] for rep in by_round(reports, r).values()]


def test_live_fedavg_ends_on_one_model_and_learns():
    reports, peers, _ = asyncio.run(run_federation(N, ROUNDS, graph="star", rule="fedavg"))
    for r in range(1, ROUNDS + 1):
        got = by_round(reports, r)
        assert set(got) == set(range(1, N + 1))
        assert len({rep["model_hash"] for rep in got.values()}) == 1, r  # every peer adopted the global model
        assert all(rep["rejected"] == [] for rep in got.values())
    assert min(accuracies(reports, ROUNDS)) > 0.85
    assert sum(accuracies(reports, ROUNDS)) > sum(accuracies(reports, 1))
    finals = [peers[i].final_model for i in range(1, N + 1)]
    assert len({sha256_hex(pack_state(m)) for m in finals}) == 1
    # Node 1 is position 0, the star's centre: it received every leaf's upload and sent the global back.
    hub, leaf = by_round(reports, 1)[1], by_round(reports, 1)[2]
    assert hub["bytes_received"] > 2 * leaf["bytes_received"] > 0


@pytest.mark.parametrize("rule, params", [("fedprox", {"mu": 0.1}), ("fedadam", {"server_lr": 0.1})])
def test_live_fedprox_and_fedadam_learn(rule, params):
    reports, _, _ = asyncio.run(run_federation(N, ROUNDS, graph="star", rule=rule, rule_params=params))
    for r in range(1, ROUNDS + 1):
        assert len({rep["model_hash"] for rep in by_round(reports, r).values()}) == 1
    assert min(accuracies(reports, ROUNDS)) > 0.8, accuracies(reports, ROUNDS)
    assert sum(accuracies(reports, ROUNDS)) > sum(accuracies(reports, 1))


@pytest.mark.parametrize("rule, params", [("fedavg", {}), ("fedprox", {"mu": 0.5}), ("fedadam", {"server_lr": 0.05})])
def test_live_rules_follow_the_simulators_trajectory(rule, params):
    """Same shards, seeds and hyper-parameters as the simulator's in-process baseline: the same
    final model, up to the weights (the simulator weighs by sample counts, 361/360/358/358; the
    live aggregator by the plan's equal weights, never by what peers say they hold)."""
    _, peers, _ = asyncio.run(run_federation(N, ROUNDS, graph="star", rule=rule, rule_params=params))
    cfg = SimConfig(
        peers=N,
        topology="star",
        rule=rule,
        rule_params=params,
        rounds=ROUNDS,
        local_steps=BASE_CONFIG.local_steps,
        lr=BASE_CONFIG.lr,
        lr_schedule=BASE_CONFIG.lr_schedule,
        hidden=BASE_CONFIG.hidden,
        batch_size=BASE_CONFIG.batch_size,
        seed=BASE_CONFIG.seed,
        device="cpu",
    )
    sim = run_simulation(cfg, datas=[load_local_data(f"digits:{i}/{N}") for i in range(N)])
    live, simulated = peers[1].final_model, sim.final_states[0]
    distance = sum(float(torch.sum((live[k] - simulated[k]) ** 2)) for k in live) ** 0.5
    norm = sum(float(torch.sum(simulated[k] ** 2)) for k in live) ** 0.5
    assert distance < 0.01 * norm, (distance, norm)
    if rule != "fedavg":  # and the rule made a difference: it is not FedAvg under another name
        fedavg = run_simulation(
            replace(cfg, rule="fedavg", rule_params={}), datas=[load_local_data(f"digits:{i}/{N}") for i in range(N)]
        )
        other = fedavg.final_states[0]
        assert sum(float(torch.sum((live[k] - other[k]) ** 2)) for k in live) ** 0.5 > 5 * distance


def test_a_leaf_that_never_sends_is_left_out_and_the_others_finish(caplog):
    caplog.set_level(logging.INFO, logger="peers.worker")
    # Node 4 never starts: the aggregator waits for it until its cut-off, then averages the rest.
    reports, _, _ = asyncio.run(run_federation(N, ROUNDS, graph="star", rule="fedavg", late={4: 99}, deadline_s=9))
    for r in range(1, ROUNDS + 1):
        got = by_round(reports, r)
        assert set(got) == {1, 2, 3}
        assert len({rep["model_hash"] for rep in got.values()}) == 1
        assert got[1]["rejected"] == [{"sender": 4, "reason": NO_WEIGHTS_BEFORE_DEADLINE}]
        assert got[2]["rejected"] == [] and got[3]["rejected"] == []
    assert min(accuracies(reports, ROUNDS)) > 0.8
    assert "mixed 2 of 3 neighbours" in caplog.text  # the aggregator averaged itself and two leaves


def test_a_leaf_without_the_global_model_keeps_its_own_and_says_so():
    # The aggregator (node 1) starts only in round 3: in rounds 1 and 2 the leaves wait for a
    # global model that never comes, keep their own models and report why.
    reports, _, _ = asyncio.run(run_federation(3, 3, graph="star", rule="fedavg", late={1: 3}, deadline_s=7))
    first = by_round(reports, 1)
    assert set(first) == {2, 3}
    for rep in first.values():
        assert rep["rejected"] == [{"sender": 1, "reason": NO_WEIGHTS_BEFORE_DEADLINE}]
        assert rep["consensus_distance"] == 0.0  # it kept the model it trained
    assert first[2]["model_hash"] != first[3]["model_hash"]
    last = by_round(reports, 3)
    assert set(last) == {1, 2, 3} and len({rep["model_hash"] for rep in last.values()}) == 1


def test_plans_name_the_star_centre_as_aggregator_and_old_plans_still_decode():
    config = replace(BASE_CONFIG, rule="fedavg")
    members = [(7, "aa" * 32), (3, "bb" * 32), (9, "cc" * 32)]
    plans = round_plans(
        job_id=1,
        round=1,
        total_rounds=2,
        members=members,
        rows=build("star", 3),
        config=config,
        deadline=2e9,
        max_payload_bytes=1 << 20,
        sign=lambda b: b"s" * 64,
    )
    assert [p.aggregator for p in plans] == [7, 7, 7]
    assert [n.node_id for n in plans[1].neighbours] == [7]
    assert decode(encode(plans[1])).aggregator == 7
    gossip = round_plans(
        job_id=1,
        round=1,
        total_rounds=2,
        members=members,
        rows=build("star", 3),
        config=BASE_CONFIG,
        deadline=2e9,
        max_payload_bytes=1 << 20,
        sign=lambda b: b"s" * 64,
    )
    assert decode(encode(gossip[0])).aggregator == 0  # the field stays off the wire when unused
    with pytest.raises(ValueError, match="star"):
        round_plans(
            job_id=1,
            round=1,
            total_rounds=2,
            members=members,
            rows=build("ring", 3),
            config=config,
            deadline=2e9,
            max_payload_bytes=1 << 20,
            sign=lambda b: b"s" * 64,
        )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rule": "fedavg", "rule_params": {"mu": 0.1}}, "takes only"),
        ({"rule": "fedprox", "rule_params": {"mu": -1.0}}, "mu"),
        ({"rule": "fedadam", "rule_params": {"server_lr": 0.0}}, "server_lr"),
        ({"rule": "fedavg", "dp_noise": 1.0, "dp_clip": 1.0}, "differential privacy"),
        ({"rule": "fedavg", "secure_aggregation": True, "compression": "int8"}, "secure_aggregation"),
    ],
)
def test_the_config_refuses_what_the_star_cannot_run(changes, message):
    with pytest.raises(ProtocolError, match=message):
        JobConfig(**changes)


def test_the_validator_scores_every_members_upload_in_a_star_baseline():
    reports, _, _ = asyncio.run(
        run_federation(N, 2, graph="star", rule="fedavg", shards=N + 1, validator_data=f"digits:{N}/{N + 1}")
    )
    scores = {rep["round"]: rep for rep in reports if rep.get("type") == "validator.scores"}
    assert sorted(scores) == [1, 2]
    for report in scores.values():
        ppm = scores_ppm(score_from_evidence(report["evidence"]))  # the aggregator's local model too
        assert set(ppm) == set(range(1, N + 1)) and all(v > 0 for v in ppm.values()), ppm
    members = [rep for rep in reports if rep.get("type") != "validator.scores"]
    for r in (1, 2):
        assert len({rep["model_hash"] for rep in members if rep["round"] == r}) == 1
