"""A creator deposits a job's budget from their own browser wallet (EIP-1193), on the production
stack: the page asks the wallet for its account, the platform registers the job to it, the
wallet sends approve + fundJob, and the settlement worker finds the deposit on chain. The wallet
here is a real EIP-1193 provider over anvil's JSON-RPC with one of anvil's unlocked accounts
(what MetaMask does, minus the confirmation dialogs)."""

import json
import time

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import sync_playwright

from jobs.models import Job
from ledger.chain import Chain
from ledger.escrow import open_escrow
from ledger.models import WEI_PER_TOKEN, Escrow
from tests.browser import Browser
from tests.live_clients import launch_chromium, watch_page_errors

pytestmark = pytest.mark.slow
WALLET = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # anvil's account 1 (public, unlocked on anvil)

PROVIDER = """
window.ethereum = {
  isTestWallet: true,
  request: async ({ method, params }) => {
    if (method === "eth_requestAccounts" || method === "eth_accounts") return [%(wallet)s];
    const res = await fetch(%(rpc)s, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params: params || [] }),
    });
    const body = await res.json();
    if (body.error) throw new Error(body.error.message);
    return body.result;
  },
};
"""


def test_a_creator_deposits_from_their_browser_wallet(stack):
    creator = Browser(stack.url)
    creator.sign_up("wallet-creator", "a-long-password-1")
    owner = get_user_model().objects.get(username="wallet-creator")
    job = Job.objects.create(owner=owner, name="wallet job", reward_per_round=6, rounds=2, num_peers=2)
    open_escrow(job)
    chain = Chain.from_settings()
    chain.ledger()  # deployed, as after any earlier job (the page encodes calls to it)
    chain.mint(WALLET, 12 * WEI_PER_TOKEN)
    before = chain.balance_of(WALLET)

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            context = browser.new_context()
            context.add_cookies([{"name": "sessionid", "value": creator.session_cookie, "url": stack.url}])
            context.add_init_script(PROVIDER % {"wallet": json.dumps(WALLET), "rpc": json.dumps(stack.chain_url)})
            page = context.new_page()
            errors = watch_page_errors(page)
            page.goto(f"{stack.url}/jobs/{job.id}/")
            page.click("#fund-browser")
            deadline = time.monotonic() + 120  # no ORM in here: Playwright's loop runs in this thread
            while creator.get(f"/jobs/{job.id}/fund/browser/").json()["status"] != "funded":
                assert time.monotonic() < deadline, page.text_content("#fund-browser-state") + stack.logs()
                time.sleep(0.5)
            page.wait_for_selector('[data-escrow="status"]:text("funded")', timeout=30_000)
            assert [e for e in errors if not e.endswith("/favicon.ico")] == [], errors
        finally:
            browser.close()

    escrow = Escrow.objects.get(job=job)
    assert escrow.browser_wallet and escrow.funder.lower() == WALLET.lower() and escrow.fund_tx_hash
    assert chain.balance_of(WALLET) == before - 12 * WEI_PER_TOKEN
    on_chain = chain.ledger().functions.jobs(job.id).call()
    assert on_chain[0].lower() == WALLET.lower() and on_chain[5]  # the creator is the wallet; funded
