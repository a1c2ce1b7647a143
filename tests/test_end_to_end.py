"""The whole path of a job on the production stack, deployed as README.md's Production section
says (migrate, collectstatic, daphne, a Celery worker and beat, settings only from the
environment): a job creator's forms, four `python -m peers join` processes from a clean
environment exchanging weights through Redis, a real browser and an independent websocket client
watching the job page from before it starts until it is settled, and the payouts read back from
anvil."""

import hashlib
import re
import secrets
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from jobs.models import Job, Round, ValidatorReport
from ledger.audit import audit_job
from ledger.chain import Chain
from ledger.models import ContractDeployment, ContributionScore, Escrow, Payout, tokens_text
from modelstore.models import FinalModel
from tests.browser import Browser
from tests.chain_fixtures import ANVIL_DEV_KEY
from tests.live_clients import JobWatcher, launch_chromium, watch_page_errors
from tests.stack_fixtures import participant_command

PEERS = 4
ROUNDS = 4
SCREENSHOT = Path("/tmp/e2e_job_page.png")
SETTLED_WITHIN_MS = 300_000

PAGE_STATE = """() => ({
  status: document.getElementById('job-status').textContent,
  round: document.getElementById('job-round').textContent,
  live: document.getElementById('live-state').textContent,
  waiting: document.getElementById('waiting-on').textContent,
  peers: Array.from(document.querySelectorAll('#peers tr')).map(r => Array.from(r.cells).map(c => c.textContent)),
  payouts: Array.from(document.querySelectorAll('#payouts tr')).map(r => Array.from(r.cells).map(c => c.textContent)),
  navigations: performance.getEntriesByType('navigation').length,
})"""


def test_job_from_browser_to_on_chain_payout(stack, settings, tmp_path):
    settings.CHAIN_RPC_URL, settings.CHAIN_PRIVATE_KEY = stack.chain_url, ANVIL_DEV_KEY
    hw = participant_command(tmp_path, "hw")
    shards = participant_command(tmp_path, "shards", "--out", str(tmp_path), "--peers", str(PEERS)).split()

    # A job creator signs up, registers the node that will validate (it holds the creator's own
    # validation data), and creates a job that node scores.
    creator = Browser(stack.url)
    creator.sign_up("creator", "a-long-password-1")
    token_page = creator.submit("/nodes/register/", {"name": "validation", "hardware_json": hw})
    validator_token = re.search(r'id="node-token">([^<]+)<', token_page.text).group(1)
    validator_id = int(re.search(r"/nodes/(\d+)/", token_page.text).group(1))
    page = creator.submit(
        "/jobs/new/",
        {
            "name": "Digits on four peers",
            "description": "",
            "is_public": "on",
            "dataset": "digits",
            "model": "mlp",
            "hidden": 64,
            "topology": "ring",
            "num_peers": PEERS,
            "rounds": ROUNDS,
            # constant lr: with the cosine default a 4-round job ends at lr/4 and near 0.8 accuracy
            "local_steps": 15,
            "lr": 0.2,
            "lr_schedule": "constant",
            "batch_size": 32,
            "round_timeout_s": 90,
            "min_vram_gb": 0,
            "reward_per_round": 100,
            "validator": validator_id,
        },
    )
    job_id = int(re.search(r"/jobs/(\d+)/", page.url).group(1))
    assert "Recruiting" in page.text and 'id="fund-job"' in page.text
    # The creator takes test tokens from the faucet and deposits the budget; the settlement
    # worker signs both, and the page shows the escrow funded.
    creator.submit("/payouts/faucet/", {}, form_page="/payouts/")
    deadline = time.monotonic() + 60
    while '<b id="wallet-tokens">1,000</b>' not in creator.get("/payouts/").text:
        assert time.monotonic() < deadline, "the faucet's tokens never arrived"
        time.sleep(0.5)
    creator.submit(f"/jobs/{job_id}/fund/", {}, form_page=f"/jobs/{job_id}/")
    while not Escrow.objects.filter(job_id=job_id, status=Escrow.Status.FUNDED).exists():
        assert time.monotonic() < deadline, f"the deposit was not made\n{stack.logs()}"
        time.sleep(0.5)

    # An independent websocket client watches from before the job starts...
    watcher = JobWatcher(stack.url, job_id, creator.session_cookie)
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            # ...and so does the creator's browser, logged in with the same session.
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.add_cookies([{"name": "sessionid", "value": creator.session_cookie, "url": stack.url}])
            view = context.new_page()
            errors = watch_page_errors(view)
            view.goto(f"{stack.url}/jobs/{job_id}/")
            view.wait_for_function(
                "() => document.getElementById('live-state').textContent.startsWith('Live')", timeout=20_000
            )

            stack.peer(validator_token, "digits:0/1")  # the validator: scores every round, trains nothing
            # Participants sign up, register a node (hardware from the peer itself), consent, start a peer.
            addresses = []
            people = {}
            for i in range(PEERS):
                address = "0x" + secrets.token_hex(20)
                addresses.append(address)
                person = Browser(stack.url)
                person.sign_up(f"participant{i}", "a-long-password-1", address)
                people[f"node-{i}"] = person
                token_page = person.submit("/nodes/register/", {"name": f"node-{i}", "hardware_json": hw})
                token = re.search(r'id="node-token">([^<]+)<', token_page.text).group(1)
                node_id = int(re.search(r"/nodes/(\d+)/", token_page.text).group(1))
                consent = person.submit(
                    f"/jobs/{job_id}/consent/", {"node": node_id, "grant": "yes"}, form_page=f"/jobs/{job_id}/"
                )
                assert "consents to train" in consent.text
                stack.peer(token, shards[i])

            # The worker forms the cohort when the peers say hello; the rounds run; the job is
            # settled: the page follows all of it without a reload.
            view.wait_for_function(
                "() => document.getElementById('job-status').textContent === 'Completed'", timeout=SETTLED_WITHIN_MS
            )
            view.wait_for_timeout(300)  # let plotly finish drawing before the picture
            view.screenshot(path=str(SCREENSHOT), full_page=True)
            seen = view.evaluate(PAGE_STATE)
            # What the page drew for the waiting job went with it: no recruiting line, no cancel button.
            gone = "(id) => { const e = document.getElementById(id); return !e || e.offsetParent === null; }"
            assert view.evaluate(gone, "recruiting") and view.evaluate(gone, "cancel-job")
            assert [e for e in errors if not e.endswith("/favicon.ico")] == [], errors
        finally:
            browser.close()
            watcher.close()

    job = Job.objects.get(pk=job_id)
    assert job.status == Job.Status.SETTLED, f"job ended as {job.status} {job.failure}\n{stack.logs()}"
    assert seen["navigations"] == 1 and seen["round"] == f"{ROUNDS} / {ROUNDS}"
    assert seen["live"].startswith("Live"), seen
    assert sorted(row[1] for row in seen["peers"]) == [f"node-{i}" for i in range(PEERS)]

    rounds = list(Round.objects.filter(job=job).order_by("number"))
    assert [r.number for r in rounds] == list(range(1, ROUNDS + 1))
    assert all(r.status == "closed" and r.reporters == PEERS for r in rounds)
    assert rounds[-1].mean_accuracy > rounds[0].mean_accuracy
    assert rounds[-1].mean_accuracy > 0.8
    # Weights really travelled between the peer processes.
    for report in rounds[-1].reports.all():
        assert report.bytes_received > 0 and report.rejected == []

    # The validator scored every round, and the rewards follow its scores (recomputed from evidence).
    assert ValidatorReport.objects.filter(round__job=job).count() == ROUNDS
    assert set(ContributionScore.objects.filter(round__job=job).values_list("source", flat=True)) == {"validator"}

    # Every round's payouts are on chain: balances and receipts read from anvil, not the database.
    chain = Chain.from_settings()
    payouts = list(Payout.objects.filter(job=job).select_related("node", "round").order_by("round__number", "node_id"))
    # Honest peers on similar shards: the validator pays each of them in most rounds (a peer whose
    # model did not help on the validator's data in a round is paid nothing for it).
    assert {p.node.name for p in payouts} == {f"node-{i}" for i in range(PEERS)}
    assert {p.round.number for p in payouts} == set(range(1, ROUNDS + 1))
    owed: dict[str, int] = {}
    for payout in payouts:
        assert payout.status == "confirmed"
        receipt = chain.receipt(payout.tx_hash)
        where = f"payout {payout.pk} round {payout.round.number} tx {payout.tx_hash!r} ({payout.error or 'no note'})"
        assert receipt is not None, f"{where}: no receipt on chain\n{stack.logs()}"
        assert receipt["status"] == 1 and receipt["blockNumber"] == payout.block_number, where
        owed[payout.address.lower()] = owed.get(payout.address.lower(), 0) + int(payout.amount_wei)
    assert set(owed) == {a.lower() for a in addresses}
    assert all(chain.balance_of(address) == amount > 0 for address, amount in owed.items())
    assert sum(owed.values()) == ROUNDS * 100 * 10**18
    assert [c for c in audit_job(job) if not c.ok] == []
    escrow = Escrow.objects.get(job=job)
    assert escrow.status == Escrow.Status.CLOSED and int(escrow.refunded_wei) == 0  # every round was paid

    # The browser showed each payout, with the one rounding, as it was pushed (no reload).
    expected = [
        [
            str(p.round.number),
            p.node.name,
            tokens_text(p.amount_wei),
            p.score_percent,
            "confirmed",
            p.tx_hash,
            str(p.block_number),
        ]
        for p in payouts
    ]
    assert seen["payouts"] == expected

    # The websocket client saw the same story, in order, exactly once each.
    kinds = [f["kind"] for f in watcher.frames]
    assert kinds[0] == "snapshot" and watcher.frames[0]["data"]["status"] == "waiting"
    statuses = [f["data"]["status"] for f in watcher.frames if f["kind"] == "status"]
    recruiting = [f["data"]["recruiting"] for f in watcher.frames if f["kind"] == "status" and f["data"]["recruiting"]]
    counts = [r["consented"] for r in recruiting]  # each consent counted, live (the deposit's frame too)
    # (the last consent's frame may find the job already forming its cohort: then it says nothing)
    assert counts == sorted(counts) and set(range(1, PEERS)) <= set(counts) and counts[-1] <= PEERS
    moved = statuses[len(recruiting) :]
    assert statuses[: len(recruiting)] == ["waiting"] * len(recruiting)
    assert moved[0] == "running" and moved[-1] == "settled" and "finished" in moved
    reports = [(f["data"]["round"], f["data"]["node"]) for f in watcher.frames if f["kind"] == "report"]
    assert (
        sorted(reports)
        == sorted({(r.round.number, r.node_id) for r in rounds[0].job.round_set.all() for r in r.reports.all()})
        and len(reports) == ROUNDS * PEERS
    )
    assert [f["data"]["round"] for f in watcher.frames if f["kind"] == "round"] == list(range(1, ROUNDS + 1))
    settled = [f for f in watcher.frames if f["kind"] == "status" and f["data"]["status"] == "settled"][-1]
    assert [(p["round"], p["node"], p["amount"], p["tx_hash"]) for p in settled["data"]["payouts"]] == [
        (p.round.number, p.node_id, tokens_text(p.amount_wei), p.tx_hash) for p in payouts
    ]

    # The validator uploaded the final consensus; the settler registered it on chain by its hash
    # and granted the creator access: the creator downloads it, a participant cannot.
    deadline = time.monotonic() + 60
    while not FinalModel.objects.filter(job=job, status=FinalModel.Status.REGISTERED).exists():
        assert time.monotonic() < deadline, f"the final model was not registered\n{stack.logs()}"
        time.sleep(0.5)
    final = FinalModel.objects.get(job=job)
    registry = chain.registry()
    assert registry.functions.models(final.registry_model_id).call()[2].hex() == final.sha256
    while (download := creator.session.get(f"{stack.url}/jobs/{job.id}/model/", timeout=30)).status_code != 200:
        assert time.monotonic() < deadline, f"the creator's access was not granted\n{stack.logs()}"
        time.sleep(0.5)
    blob = download.content
    assert hashlib.sha256(blob).hexdigest() == final.sha256 and len(blob) == final.size
    assert people["node-0"].session.get(f"{stack.url}/jobs/{job.id}/model/").status_code == 404

    # Each participant's payouts page lists their earnings per round with the transaction; the
    # creator's shows the job's budget, all of it committed and paid; both show the token.
    for payout in payouts:
        assert payout.tx_hash in people[payout.node.name].get("/payouts/").text
    listing = creator.get("/payouts/").text
    assert 'id="budgets"' in listing and f"#{job.id}" in listing
    token = ContractDeployment.reward_tokens().get(chain_id=chain.chain_id)
    assert token.address in listing and chain.w3.eth.get_code(token.address)
    for proc in stack.peers:
        assert proc.popen.wait(timeout=30) == 0, proc.output()[-2000:]
        assert " ERROR " not in proc.output(), proc.output()[-3000:]
