"""A hostile node with valid credentials against the real peers' exchange.

The node API used to hand every peer the platform's own Redis URL; with it one node read and
popped another node's inbox, wrote round plans into it, joined a private job's live group,
queued Celery tasks and ran CONFIG SET and FLUSHALL. Now a node gets, at hello, a user of its
own on a Redis for peers only (nodes.exchange). Each attack below runs as Mallory, a member of a
running job, with exactly what the platform gave it, and each is refused.

The other attacks of that list have their own files: forged, stale and replayed plans and
missing consent (test_signed_plans.py), a stolen token re-keying the node (test_node_api.py),
oversized and crafted weights (test_hostile_weights.py, test_bad_weights.py, test_tensorbytes.py),
lost plans, crashed peers and a broker that is down (test_orchestration.py, test_report_retries.py,
test_peer_liveness.py), compose's environment (test_compose.py).
"""

import asyncio
import json
import secrets
import threading
import time

import msgpack
import pytest
import redis
import requests
from django.conf import settings
from django.db import connection

from jobs.models import Consent, Job, Round
from jobs.orchestration import close_round, dispatch_plans, signed_plans
from nodes import exchange as node_exchange
from peers.protocol import node_channel
from peers.transport.redis import NodeCredentials, RedisChannelTransport
from tests.factories import make_node, make_running_job, make_user

pytestmark = pytest.mark.django_db(transaction=True)
KEY = "ab" * 32  # make_running_job's nodes have this key, so their hello passes the key check


def hello(client, node) -> dict:
    response = client.post(
        "/api/v1/node/hello",
        data=json.dumps({"public_key": KEY}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {node.token}",
    )
    assert response.status_code == 200, response.content
    return response.json()


def connect(exchange_info: dict) -> redis.Redis:
    return redis.Redis.from_url(
        exchange_info["url"], username=exchange_info["username"], password=exchange_info["password"]
    )


@pytest.fixture
def ring(exchange, client):
    """Round 1 of a running 4-node ring job, plans dispatched: victim 0's neighbours are 1 and 3,
    Mallory (2) is not one of them."""
    owner = make_user()
    job, rnd, nodes = make_running_job(owner, cohort_size=4, rounds=2, topology="ring")
    creds = {node.id: hello(client, node)["exchange"] for node in nodes}
    dispatch_plans(rnd)
    neighbours = {plan.node_id: {n.node_id for n in plan.neighbours} for plan in signed_plans(rnd)}
    victim, mallory = nodes[0], nodes[2]
    assert mallory.id not in neighbours[victim.id] and victim.id not in neighbours[mallory.id]
    return job, rnd, nodes, creds, neighbours


def refused(call) -> str:
    with pytest.raises(redis.exceptions.NoPermissionError) as info:
        call()
    return str(info.value)


def test_hello_hands_out_a_user_of_the_nodes_own_and_nothing_of_the_platforms(exchange, client):
    owner = make_user()
    _, _, (node, _) = make_running_job(owner)
    info = hello(client, node)
    text = json.dumps(info)
    for secret in (settings.REDIS_URL, settings.CELERY_BROKER_URL, exchange.password, settings.SECRET_KEY):
        assert secret not in text
    assert info["exchange"]["url"] == exchange.public_url and info["exchange"]["username"] == f"node-{node.id}"
    with connect(info["exchange"]) as own:
        assert own.ping()
    # The server's default user is off: without the credentials nobody gets in.
    with redis.Redis.from_url(exchange.public_url) as anonymous, pytest.raises(redis.exceptions.RedisError):
        anonymous.ping()


def test_a_node_cannot_read_pop_or_wipe_another_nodes_inbox(ring):
    _, _, nodes, creds, _ = ring
    victim, mallory = nodes[0], nodes[2]
    victim_inbox = node_exchange.inbox_key(victim.id)
    with connect(creds[mallory.id]) as m:
        refused(lambda: m.zrange(victim_inbox, 0, -1))
        refused(lambda: m.bzmpop(0.1, 1, [victim_inbox], min=True, count=10))
        refused(lambda: m.zpopmin(victim_inbox))
        refused(lambda: m.delete(victim_inbox))
        refused(lambda: m.zremrangebyscore(victim_inbox, 0, "+inf"))
        refused(lambda: m.expire(victim_inbox, 1))
        refused(lambda: m.zadd(victim_inbox, {b"x" * 12 + msgpack.packb({"type": "round.plan"}): 1.0}))
    # The victim's plan is still there, and the victim (only) can pop it.
    with connect(creds[victim.id]) as v:
        popped = v.bzmpop(1, 1, [victim_inbox], min=True, count=10)
        assert popped and msgpack.unpackb(popped[1][0][0][12:])["type"] == "round.plan"


def test_a_neighbour_may_add_to_the_inbox_but_not_read_or_remove_what_others_sent(ring):
    _, _, nodes, creds, neighbours = ring
    victim = nodes[0]
    neighbour = next(n for n in nodes if n.id in neighbours[victim.id])
    victim_inbox = node_exchange.inbox_key(victim.id)
    with connect(creds[neighbour.id]) as n:
        assert n.zadd(victim_inbox, {b"r" * 12 + msgpack.packb({"type": "t"}): 1.0}) == 1
        assert n.zcard(victim_inbox) == 2  # its message and the platform's plan: a count, no content
        refused(lambda: n.zrange(victim_inbox, 0, -1))
        refused(lambda: n.zpopmin(victim_inbox))
        refused(lambda: n.zremrangebyscore(victim_inbox, 0, "+inf"))
        refused(lambda: n.expire(victim_inbox, 1))
        refused(lambda: n.delete(victim_inbox))
        refused(lambda: n.eval("return redis.call('ZRANGE', KEYS[1], 0, -1)", 1, victim_inbox))


@pytest.mark.parametrize(
    "command",
    [
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("CONFIG", "SET", "maxmemory", "1"),
        ("CONFIG", "GET", "*"),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("EVAL", "while true do end", "0"),
        ("FUNCTION", "LIST"),
        ("PUBLISH", "asgi__group__job.1", "x"),
        ("ACL", "SETUSER", "node-999", "on", ">x", "~*", "+@all"),
        ("ACL", "LIST"),
        ("CLIENT", "LIST"),
        ("CLIENT", "KILL", "USER", "platform"),
        ("SET", "anything", "x"),
        ("SHUTDOWN",),
        ("SELECT", "1"),
        ("MONITOR",),
        ("SAVE",),
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_no_other_command_runs(ring, command):
    _, _, nodes, creds, _ = ring
    with connect(creds[nodes[2].id]) as m:
        message = refused(lambda: m.execute_command(*command))
    assert "no permissions" in message


def test_no_pubsub_channel_is_open_to_a_node(ring):
    _, _, nodes, creds, _ = ring
    with connect(creds[nodes[2].id]) as m:
        pubsub = m.pubsub()
        with pytest.raises(redis.exceptions.RedisError):
            pubsub.subscribe("asgi__group__job.1")
            pubsub.get_message(timeout=1)
        pubsub.close()


def test_the_grants_follow_the_open_rounds_and_end_with_the_job(exchange, client):
    owner = make_user()
    job, rnd, nodes = make_running_job(owner, cohort_size=3, rounds=1, topology="ring")
    _, _, (outsider,) = make_running_job(owner, cohort_size=1, name="another job")
    creds = {node.id: hello(client, node)["exchange"] for node in [*nodes, outsider]}
    a, b = nodes[0], nodes[1]
    with connect(creds[outsider.id]) as conn:  # in no open round with b: may not send to it
        refused(lambda: conn.zadd(node_exchange.inbox_key(b.id), {b"m" * 13: 1.0}))
    with connect(creds[a.id]) as conn:
        assert conn.zadd(node_exchange.inbox_key(b.id), {b"n" * 13: 1.0}) == 1  # its neighbour in round 1
        close_round(rnd.id)  # the last round (nobody reported: the job fails), so no open round is left
        job.refresh_from_db()
        assert job.status == job.Status.FAILED
        refused(lambda: conn.zadd(node_exchange.inbox_key(b.id), {b"o" * 13: 1.0}))  # same connection


def test_a_new_token_or_a_reset_key_revokes_the_exchange_user_and_its_connections(ring, client):
    _, _, nodes, creds, _ = ring
    owner = nodes[0].owner
    client.force_login(owner)
    for node, action in ((nodes[2], "token"), (nodes[1], "reset-key")):
        conn = connect(creds[node.id])
        assert conn.ping()
        response = client.post(f"/nodes/{node.id}/{action}/")
        assert response.status_code in (200, 302)
        with pytest.raises(redis.exceptions.ConnectionError):  # dropped, and its password is gone
            conn.ping()
        conn.close()
        with connect(creds[node.id]) as again, pytest.raises(redis.exceptions.AuthenticationError):
            again.ping()
    with redis.Redis.from_url(settings.PEER_REDIS_URL) as admin:
        assert not admin.exists(node_exchange.inbox_key(nodes[2].id))


def in_own_connection(function, *args):
    """Run ORM code in this (worker) thread and close its database connection afterwards."""
    try:
        return function(*args)
    finally:
        connection.close()


async def receive_retrying(transport, channel, timeout=15.0):
    """As the peer's receive loop does: a connection lost to the restart is retried."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await asyncio.wait_for(transport.receive(channel), 5)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


def test_a_peer_renews_its_credentials_after_the_exchange_restarts(exchange, client):
    """A restart without persistence forgets every node user: the transport says hello again."""
    owner = make_user()
    _, rnd, (a, b) = make_running_job(owner, cohort_size=2, rounds=2)
    creds = {node.id: hello(client, node)["exchange"] for node in (a, b)}
    dispatch_plans(rnd)
    hellos = []

    def renewer(node):
        async def renew():
            info = (await asyncio.to_thread(in_own_connection, hello, client, node))["exchange"]
            hellos.append(node.id)
            return info["username"], info["password"]

        return renew

    async def scenario():
        sender, receiver = (
            RedisChannelTransport(
                creds[n.id]["url"],
                credentials=NodeCredentials(creds[n.id]["username"], creds[n.id]["password"], renewer(n)),
                block_s=1,
            )
            for n in (a, b)
        )
        try:
            assert (await asyncio.wait_for(receiver.receive(node_channel(b.id)), 5))["type"] == "round.plan"
            await sender.send(node_channel(b.id), {"type": "before"})
            assert await asyncio.wait_for(receiver.receive(node_channel(b.id)), 5) == {"type": "before"}
            await asyncio.to_thread(exchange.restart)
            await asyncio.to_thread(
                in_own_connection, dispatch_plans, rnd
            )  # beat's resend: the plan is back, grants rewritten
            await sender.send(node_channel(b.id), {"type": "after"})
            received = [await receive_retrying(receiver, node_channel(b.id)) for _ in range(2)]
            assert {m["type"] for m in received} == {"round.plan", "after"}
        finally:
            await sender.close()
            await receiver.close()

    asyncio.run(scenario())
    assert sorted(hellos) == sorted({a.id, b.id})


def run_ring_job(stack, name: str, attacker=None) -> tuple[Job, int]:
    """Four honest peers on a ring train a 6-round job; ``attacker(job, nodes)`` runs beside it
    (in a thread) and returns how many of its attempts were refused."""
    nodes = []
    for i in range(4):
        owner = make_user(f"{name}-op{i}", payout_address="0x" + secrets.token_hex(20))
        nodes.append(make_node(owner, f"{name}-{i}"))
    job = Job.objects.create(
        owner=nodes[0].owner,
        name=name,
        num_peers=4,
        rounds=6,
        round_timeout_s=60,
        local_steps=30,
        lr=0.2,
        lr_schedule="constant",
        seed=1234,
    )
    for node in nodes:
        Consent.objects.create(job=job, node=node, granted=True, by=node.owner)
    peers = [stack.peer(node.token, f"digits:{i}/4") for i, node in enumerate(nodes)]
    refusals = []
    attack = None
    if attacker is not None:
        attack = threading.Thread(target=lambda: refusals.append(attacker(job, nodes)))
        attack.start()
    for peer in peers:
        assert peer.popen.wait(timeout=240) == 0, peer.output()[-3000:] + stack.logs()
    if attack is not None:
        attack.join(timeout=60)
    job.refresh_from_db()
    return job, (refusals[0] if refusals else 0)


@pytest.mark.slow
def test_an_outsider_with_valid_credentials_changes_nothing_in_a_running_job(stack):
    """Mallory, a registered node with its own exchange user, spends a whole job trying to read,
    pop, wipe and forge other nodes' inboxes and to run admin commands; every try is refused and
    the job ends where the same job without her ends (within 2 accuracy points)."""
    mallory = make_node(make_user("mallory", payout_address="0x" + secrets.token_hex(20)), "mallory")
    answer = requests.post(
        stack.url + "/api/v1/node/hello",
        json={"public_key": KEY},
        headers={"Authorization": f"Bearer {mallory.token}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    creds = answer.json()["exchange"]

    def attack(job, nodes) -> int:
        refused = 0
        forged_plan = b"m" * 12 + msgpack.packb({"type": "round.plan", "job_id": job.id, "round": 2})
        with connect(creds) as m:
            while Job.objects.filter(pk=job.pk, status__in=[Job.Status.WAITING, Job.Status.RUNNING]).exists():
                attempts = [("FLUSHALL",), ("CONFIG", "SET", "maxmemory", "1"), ("KEYS", "*")]
                for node in nodes:
                    inbox = node_exchange.inbox_key(node.id)
                    attempts += [
                        ("ZRANGE", inbox, 0, -1),
                        ("ZPOPMIN", inbox),
                        ("BZMPOP", 0.05, 1, inbox, "MIN", "COUNT", 10),
                        ("DEL", inbox),
                        ("ZADD", inbox, 1.0, forged_plan),
                    ]
                for command in attempts:
                    try:
                        m.execute_command(*command)
                    except redis.exceptions.NoPermissionError:
                        refused += 1
                    else:
                        raise AssertionError(f"mallory ran {command}")
                time.sleep(0.2)
        connection.close()
        return refused

    baseline, _ = run_ring_job(stack, "without-mallory")
    attacked, refused = run_ring_job(stack, "with-mallory", attack)
    assert baseline.status == attacked.status == Job.Status.SETTLED, (baseline.failure, attacked.failure)
    assert refused > 100  # she kept trying all along
    last = {job.id: Round.objects.get(job=job, number=6) for job in (baseline, attacked)}
    assert last[attacked.id].reporters == last[baseline.id].reporters == 4
    assert abs(last[attacked.id].mean_accuracy - last[baseline.id].mean_accuracy) <= 0.02, last


def test_the_grants_are_the_signed_plans_links(exchange):
    """exchange_grants reads the neighbours off the mixing rows without signing plans: they must
    be exactly the plans' (on a ring, a torus and an expander)."""
    from jobs.orchestration import exchange_grants

    owner = make_user()
    for topology, size in (("ring", 5), ("torus", 9), ("expander", 8)):
        _, rnd, nodes = make_running_job(owner, cohort_size=size, topology=topology, name=topology, degree=4)
        from_plans = {plan.node_id: {n.node_id for n in plan.neighbours} for plan in signed_plans(rnd)}
        assert exchange_grants({n.id for n in nodes}) == from_plans
