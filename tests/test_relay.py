"""The exchange over the platform's websocket (/ws/node/, nodes.relay) through the real ASGI
application, onto the real peers' exchange (a Redis the tests started): a node receives its
inbox, sends to its neighbours, and is refused everything else (another node's inbox, a forged
sender, junk frames, no or a bad token)."""

import asyncio
import json

import msgpack
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from hub.asgi import application
from jobs.orchestration import dispatch_plans, signed_plans
from peers.protocol import node_channel
from peers.transport.redis import NodeCredentials, RedisChannelTransport
from tests.factories import make_running_job, make_user

pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT = 10


def hello(node) -> dict:
    response = Client().post(
        "/api/v1/node/hello",
        data=json.dumps({"public_key": "ab" * 32}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {node.token}",
    )
    assert response.status_code == 200, response.content
    return response.json()["exchange"]


@database_sync_to_async
def ring_of_four():
    owner = make_user()
    _, rnd, nodes = make_running_job(owner, cohort_size=4, rounds=2, topology="ring")
    creds = {node.id: hello(node) for node in nodes}
    dispatch_plans(rnd)
    neighbours = {plan.node_id: {n.node_id for n in plan.neighbours} for plan in signed_plans(rnd)}
    return nodes, creds, neighbours


async def relay(token: str | None) -> WebsocketCommunicator:
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    communicator = WebsocketCommunicator(application, "/ws/node/", headers=headers)
    return communicator


async def frame(communicator) -> dict:
    return msgpack.unpackb(await communicator.receive_from(timeout=TIMEOUT), raw=False)


async def send(communicator, request_id, to, messages) -> dict:
    await communicator.send_to(
        bytes_data=msgpack.packb({"type": "relay.send", "id": request_id, "to": to, "messages": messages})
    )
    while True:
        answer = await frame(communicator)
        if answer["type"] == "relay.ack":
            return answer


async def test_a_node_gets_its_inbox_and_sends_only_to_its_neighbours_as_itself(exchange):
    nodes, creds, neighbours = await ring_of_four()
    victim, mallory = nodes[0], nodes[2]
    neighbour = next(n for n in nodes if n.id in neighbours[victim.id])

    # The neighbour, over the relay, gets its own plan first.
    via_relay = await relay(neighbour.token)
    assert (await via_relay.connect(timeout=TIMEOUT))[0]
    first = await frame(via_relay)
    assert first["type"] == "relay.message" and first["message"]["type"] == "round.plan"
    assert first["message"]["node_id"] == neighbour.id

    # It sends to the victim (a neighbour) as itself; the victim, on Redis, receives it.
    chunk = {"type": "test.chunk", "sender": neighbour.id, "data": b"\x00" * 1000}
    assert await send(via_relay, 1, victim.id, [chunk, chunk]) == {"type": "relay.ack", "id": 1, "sent": 2}
    victim_transport = RedisChannelTransport(
        creds[victim.id]["url"],
        credentials=NodeCredentials(creds[victim.id]["username"], creds[victim.id]["password"]),
        block_s=1,
    )
    try:
        got = [await asyncio.wait_for(victim_transport.receive(node_channel(victim.id)), TIMEOUT) for _ in range(3)]
    finally:
        await victim_transport.close()
    assert [m["type"] for m in got] == ["round.plan", "test.chunk", "test.chunk"]

    # Refused: a forged sender, a node it is not planned with, junk.
    forged = await send(via_relay, 2, victim.id, [{"type": "test.chunk", "sender": mallory.id}])
    assert "must come from node" in forged["error"]
    not_neighbour = next(n for n in nodes if n.id not in neighbours[neighbour.id] and n.id != neighbour.id)
    refused = await send(via_relay, 3, not_neighbour.id, [{"type": "test.chunk", "sender": neighbour.id}])
    assert "may not send" in refused["error"]
    await via_relay.send_to(bytes_data=b"\xc1 not msgpack")
    assert "not msgpack" in (await frame(via_relay))["error"]
    await via_relay.send_to(text_data="{}")
    assert "binary msgpack" in (await frame(via_relay))["error"]
    for bad in ({"type": "relay.send", "id": 4, "to": "1", "messages": [{}]}, {"type": "other"}, [1, 2]):
        await via_relay.send_to(bytes_data=msgpack.packb(bad))
        assert "error" in await frame(via_relay)
    await via_relay.disconnect()


async def test_no_token_or_a_bad_one_gets_no_relay(exchange):
    nodes, _, _ = await ring_of_four()
    for token in (None, "dfln_000000000000_nope", nodes[0].token + "x"):
        communicator = await relay(token)
        connected, code = await communicator.connect(timeout=TIMEOUT)
        assert not connected and code == 4401


async def test_a_new_token_ends_the_relay_session_of_the_old_one(exchange, settings, monkeypatch):
    from nodes import relay as relay_module

    monkeypatch.setattr(relay_module, "TOKEN_CHECK_S", 0.2)
    nodes, _, _ = await ring_of_four()
    session = await relay(nodes[0].token)
    assert (await session.connect(timeout=TIMEOUT))[0]
    assert (await frame(session))["message"]["type"] == "round.plan"

    @database_sync_to_async
    def new_token():
        nodes[0].issue_token()
        nodes[0].save(update_fields=["token_id", "token_hash"])

    await new_token()
    closed = await session.receive_output(timeout=TIMEOUT)
    assert closed == {"type": "websocket.close", "code": 4401}
