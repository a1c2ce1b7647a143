"""live.publish: group sends from synchronous code keep one event loop and one channel layer of
their own per process, while the process-wide layer serves sockets on another loop (the shape
of a daphne process whose views publish): both work side by side on real Redis."""

import asyncio
import os

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from live import publish

pytestmark = pytest.mark.django_db(transaction=True)


async def test_frames_published_from_sync_code_reach_a_receiver_on_the_shared_layer():
    shared = get_channel_layer()  # this test's loop plays daphne's
    assert shared is not None and type(shared).__name__ == "RedisChannelLayer"
    channel = await shared.new_channel()
    await shared.group_add("publish-test", channel)
    for n in range(3):  # each from a worker thread, as a sync view or a Celery task would
        await sync_to_async(publish.group_send, thread_sensitive=False)("publish-test", {"type": "t", "n": n})
        # the shared layer keeps receiving on this loop between the publishes
        message = await asyncio.wait_for(shared.receive(channel), timeout=5)
        assert message == {"type": "t", "n": n}
    sender = publish._private_sender()
    assert sender.layer is not shared and sender.pid == os.getpid()
    assert publish._private_sender() is sender  # one loop and one layer for the process, kept
    assert sender.loop.is_running()
    await shared.group_discard("publish-test", channel)


def test_a_forked_process_makes_its_own_sender():
    before = publish._private_sender()
    pid = os.fork()
    if pid == 0:  # the child (Celery's prefork): the parent's loop thread did not come along
        ok = publish._private_sender() is not before and publish._private_sender().loop.is_running()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
