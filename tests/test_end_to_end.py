"""The whole path of a job on the production stack: browser forms over daphne, a Celery worker
on Redis, four `python -m peers join` processes exchanging weights through Redis, PostgreSQL,
and payouts read back from a real anvil."""
import re
import secrets
import subprocess
import sys
import time

from jobs.models import Job, Round
from ledger.chain import Chain
from ledger.models import Payout
from tests.browser import Browser

PEERS = 4
ROUNDS = 4


def hardware_report() -> str:
    return subprocess.run([sys.executable, "-m", "peers", "hw"], check=True, capture_output=True, text=True).stdout


def test_job_from_browser_to_on_chain_payout(stack, settings, tmp_path):
    settings.CHAIN_RPC_URL = stack.chain_url
    hw = hardware_report()
    shards = subprocess.run([sys.executable, "-m", "peers", "shards", "--out", str(tmp_path), "--peers", str(PEERS)],
                            check=True, capture_output=True, text=True).stdout.split()

    # A job creator signs up and creates a job in the browser.
    creator = Browser(stack.url)
    creator.sign_up("creator", "a-long-password-1")
    page = creator.submit("/jobs/new/", {
        "name": "Digits on four peers", "description": "", "is_public": "on", "dataset": "digits",
        "model": "mlp", "hidden": 64, "topology": "ring", "num_peers": PEERS, "rounds": ROUNDS,
        # constant lr: with the cosine default a 4-round job ends at lr/4 and near 0.8 accuracy
        "local_steps": 15, "lr": 0.2, "lr_schedule": "constant", "batch_size": 32, "round_timeout_s": 90,
        "min_vram_gb": 0, "reward_per_round": 100,
    })
    job_id = int(re.search(r"/jobs/(\d+)/", page.url).group(1))
    assert "Waiting for peers" in page.text

    # Participants sign up, register a node (hardware from the peer itself), consent, and start a peer.
    addresses, peers = [], []
    for i in range(PEERS):
        address = "0x" + secrets.token_hex(20)
        addresses.append(address)
        person = Browser(stack.url)
        person.sign_up(f"participant{i}", "a-long-password-1", address)
        token_page = person.submit("/nodes/register/", {"name": f"node-{i}", "hardware_json": hw})
        token = re.search(r'id="node-token">([^<]+)<', token_page.text).group(1)
        node_id = int(re.search(r"/nodes/(\d+)/", token_page.text).group(1))
        consent = person.submit(f"/jobs/{job_id}/consent/", {"node": node_id, "grant": "yes"}, form_page=f"/jobs/{job_id}/")
        assert "consents to train" in consent.text
        peers.append(stack.peer(token, shards[i]))

    # The Celery worker forms the cohort when the peers say hello, and the rounds run.
    deadline = time.monotonic() + 240
    job = Job.objects.get(pk=job_id)
    while job.status not in (Job.Status.SETTLED, Job.Status.FAILED) and time.monotonic() < deadline:
        time.sleep(0.5)
        job.refresh_from_db()
    assert job.status == Job.Status.SETTLED, f"job ended as {job.status} {job.failure}\n{stack.logs()}"

    rounds = list(Round.objects.filter(job=job).order_by("number"))
    assert [r.number for r in rounds] == list(range(1, ROUNDS + 1))
    assert all(r.status == "closed" and r.reporters == PEERS for r in rounds)
    assert rounds[-1].mean_accuracy > rounds[0].mean_accuracy
    assert rounds[-1].mean_accuracy > 0.8
    # Weights really travelled between the peer processes.
    for report in rounds[-1].reports.all():
        assert report.bytes_received > 0 and report.rejected == []

    # Every payout is on chain: balances and receipts read from anvil, not from the database.
    chain = Chain.from_settings()
    payouts = list(Payout.objects.filter(job=job))
    assert len(payouts) == PEERS
    total = 0
    for payout in payouts:
        assert payout.status == "confirmed"
        receipt = chain.receipt(payout.tx_hash)
        assert receipt["status"] == 1 and receipt["blockNumber"] == payout.block_number
        assert chain.balance_of(payout.address) == int(payout.amount_wei) > 0
        total += chain.balance_of(payout.address)
    assert {p.address.lower() for p in payouts} == {a.lower() for a in addresses}
    assert total == ROUNDS * 100 * 10**18

    # The payouts page lists each payout with its transaction.
    listing = creator.get("/payouts/").text
    for payout in payouts:
        assert payout.tx_hash in listing
    for proc in peers:
        assert proc.popen.wait(timeout=30) == 0, proc.output()[-2000:]
