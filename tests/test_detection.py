"""Attackers detected from the validator's evidence: verdicts per round, a reputation across
rounds, flags (paid nothing, shown with their evidence on the admin audit page)."""

import json

import pytest
import torch

from jobs import orchestration
from jobs.models import Consent, Job
from ledger.detection import FLAG_BELOW, MIN_JUDGED, judge_round, verdicts
from ledger.models import Flag, Reputation
from peers.evidence import NORM_OUTLIER, TURNED_ROUNDS, next_reputation, standing
from peers.evidence import flagged as flagged_in_job
from peers.scoring import score_round
from tests.factories import make_node, make_user, peer_report
from tests.test_validator_scores import post_scores

TARGET = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 2.0])


def evidence(kinds: dict[int, str], seed: int = 0) -> dict:
    """Real evidence (peers.scoring on a quadratic bowl), models arriving in the order of
    ``kinds`` (node id -> kind): `honest` steps towards the optimum, `noise` sends a long random
    update, `echo` copies the first honest node, `free-ride` sends the start back, `sign-flip`
    steps away from the optimum."""
    generator = torch.Generator().manual_seed(seed)
    reference = {"w": torch.zeros(6)}
    updates: dict[int, dict] = {}
    first_honest = None
    for node_id, kind in kinds.items():
        honest = TARGET * 0.6 + 0.3 * torch.randn(6, generator=generator)  # distinct honest steps
        if kind == "honest" and first_honest is None:
            first_honest = node_id
        updates[node_id] = {
            "honest": {"w": honest},
            "noise": {"w": 40 * torch.randn(6, generator=generator)},
            "echo": updates.get(first_honest, {"w": honest}),
            "free-ride": {"w": torch.zeros(6)},
            "sign-flip": {"w": -2 * honest},
        }[kind]
    scores = score_round(reference, updates, lambda s: float(((s["w"] - TARGET) ** 2).sum()))
    return json.loads(json.dumps(scores.as_evidence()))


def test_verdicts_name_each_kind_of_attack():
    found = verdicts(
        evidence({1: "honest", 2: "honest", 3: "noise", 4: "echo", 5: "free-ride", 6: "sign-flip", 7: "honest"})
    )
    kinds = {node: verdict for node, (verdict, _) in found.items()}
    assert kinds == {1: "ok", 2: "ok", 3: "outlier", 4: "echo", 5: "free ride", 6: "outlier", 7: "ok"}
    assert found[3][1]["update_norm"] > found[3][1]["median_norm"]


def judge(rounds: list[tuple[str, float]], norm: float = 1.0) -> list[bool]:
    """Whether the node is flagged after each round of (verdict, agreement), its update ``norm``
    times the round's median."""
    reputation, out, recent = 1.0, [], []
    for judged, (verdict, agreement) in enumerate(rounds):
        facts = {"agreement": agreement, "update_norm": norm, "median_norm": 1.0}
        reputation = next_reputation(reputation, judged, verdict, facts)
        recent.append(standing(verdict, facts))
        out.append(flagged_in_job(verdict, reputation, judged + 1, before=any(out), recent=recent))
    return out


def test_an_honest_peer_that_points_away_now_and_then_is_not_flagged():
    # Under label skew an honest update is now and then unhelpful and points away from the
    # consensus (measured: cosine -0.4 in 5% of honest rounds); two such rounds flagged it before.
    honest = [("ok", 0.5), ("outlier", -0.4), ("ok", 0.6), ("outlier", -0.2), ("ok", 0.5), ("unhelpful", 0.2)]
    assert not any(judge(honest))


def test_an_update_that_keeps_pointing_nowhere_or_away_is_flagged_after_min_judged_rounds():
    sign_flip = [("outlier", -0.3), ("unhelpful", 0.1), ("outlier", -0.2), ("unhelpful", 0.05)]
    assert judge(sign_flip) == [False] * (MIN_JUDGED - 1) + [True] * (len(sign_flip) - MIN_JUDGED + 1)
    label_flip = [("unhelpful", 0.05)] * MIN_JUDGED  # never helps, barely agrees
    assert judge(label_flip)[-1]
    scaled = [("unhelpful", 0.4)] * MIN_JUDGED  # agrees, but NORM_OUTLIER times too long: -1 each round
    assert judge(scaled, norm=NORM_OUTLIER + 1)[-1] and not judge(scaled, norm=NORM_OUTLIER - 1)[-1]
    assert judge([("echo", 0.0)]) == [True]  # deliberate: at once


def test_a_sleeper_that_turns_after_a_long_honest_history_is_flagged_within_turned_rounds():
    # 40 helpful rounds lift the mean to 0.4: sign-flipping after that would take ~43 rounds to
    # bring it under FLAG_BELOW. Pointing away TURNED_ROUNDS rounds in a row flags it at once.
    sleeper = [("ok", 0.4)] * 40 + [("outlier", -0.3)] * TURNED_ROUNDS
    assert judge(sleeper) == [False] * (40 + TURNED_ROUNDS - 1) + [True]
    # an honest peer's occasional runs of disagreement are shorter, or not that far away
    assert not any(judge([("ok", 0.4)] * 40 + [("outlier", -0.3)] * (TURNED_ROUNDS - 1) + [("ok", 0.2)]))
    assert not any(judge([("ok", 0.4)] * 40 + [("unhelpful", -0.02)] * 10))


@pytest.mark.django_db
def test_reputation_falls_until_an_outlier_is_flagged_and_an_echo_is_flagged_at_once(client, exchange):
    creator = make_user()
    validator = make_node(creator, "validation", public_key="ee" * 32, online=True)
    job = Job.objects.create(owner=creator, name="watched", num_peers=4, rounds=MIN_JUDGED + 1, validator=validator)
    nodes = [make_node(make_user(), f"n{i}", public_key=f"{i + 1:064x}", online=True) for i in range(4)]
    for node in nodes:
        Consent.objects.create(job=job, node=node, granted=True, by=node.owner)
    assert orchestration.start_job_if_ready(job.id)
    honest_a, honest_b, noisy, echo = nodes
    kinds = {honest_a.id: "honest", honest_b.id: "honest", noisy.id: "noise", echo.id: "echo"}
    for number in range(1, MIN_JUDGED + 1):
        if number > 1:  # the last round closes with everyone's report; the next opens
            for node in (n for n in nodes if n.id in kinds):
                orchestration.accept_report(node, peer_report(job, node, number - 1))
            orchestration.close_round(job.round_set.get(number=number - 1).id)
        if number == 2:  # the echo, flagged in round 1, is planned no more
            assert echo.id not in job.round_set.get(number=2).members
            del kinds[echo.id]
        response = post_scores(client, validator, job, number, evidence(kinds, seed=number))
        assert response.status_code == 201, response.content
        flagged = set(Flag.objects.filter(job=job, round__number=number).values_list("node_id", flat=True))
        noise_reputation = Reputation.objects.get(job=job, node=noisy).value
        if number == 1:  # the echo at once
            assert flagged == {echo.id}
        if number < MIN_JUDGED:  # the outlier's mean standing is low, but one round is too few to judge
            assert noisy.id not in flagged and noise_reputation < FLAG_BELOW
        else:  # MIN_JUDGED rounds under FLAG_BELOW: flagged
            assert flagged == {noisy.id}
    for honest in (honest_a, honest_b):
        assert Reputation.objects.get(job=job, node=honest).value > FLAG_BELOW
        assert not Flag.objects.filter(job=job, node=honest).exists()
    # Flagged peers are left out of the next rounds.
    last = MIN_JUDGED
    for node in (honest_a, honest_b, noisy):
        orchestration.accept_report(node, peer_report(job, node, last))
    orchestration.close_round(job.round_set.get(number=last).id)
    assert set(job.round_set.get(number=last + 1).members) == {honest_a.id, honest_b.id}
    assert flagged_in_job("ok", 1.0, MIN_JUDGED, before=True)  # a flagged node stays flagged, whatever it does next
    flag = Flag.objects.get(job=job, round__number=last, node=noisy)
    assert flag.evidence["verdict"] == "outlier" and flag.evidence["history"][-1]["round"] == last
    # A round is judged once, whatever is posted again.
    report = job.round_set.get(number=last).validator_report
    judge_round(job, job.round_set.get(number=last), report)
    assert Reputation.objects.get(job=job, node=noisy).history[-1]["round"] == last
    assert len(Reputation.objects.get(job=job, node=noisy).history) == last

    # The admin audit page lists the flags with their evidence and the reputations.
    staff = make_user()
    staff.is_staff = True
    staff.save()
    client.force_login(staff)
    page = client.get(f"/payouts/audit/{job.id}/").content.decode()
    assert 'id="flags"' in page and "outlier (reputation -1.00)" in page and "echo (reputation" in page
    assert 'id="reputations"' in page
