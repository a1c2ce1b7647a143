// Deposit a job's budget from the creator's own browser wallet (any EIP-1193 provider such as
// MetaMask): the platform registers the job to the wallet's address, the wallet sends the two
// transactions the platform encodes (approve, fundJob), and the settlement worker finds the
// deposit on chain. Without an injected wallet the button stays hidden (the custodial wallet
// button next to it does the same).
(function () {
  "use strict";
  const button = document.getElementById("fund-browser");
  const state = document.getElementById("fund-browser-state");
  if (!button || !window.ethereum) return;
  button.hidden = false;
  const url = button.dataset.url;
  const csrf = document.querySelector("#escrow [name=csrfmiddlewaretoken]").value;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const say = (text) => { state.textContent = text; };

  async function post(address) {
    const body = new URLSearchParams({ address });
    const res = await fetch(url, { method: "POST", body, headers: { "X-CSRFToken": csrf }, credentials: "same-origin" });
    const json = await res.json();
    if (!res.ok) throw new Error(json.error || res.statusText);
    return json;
  }

  async function poll(until, what, seconds = 90) {
    for (let i = 0; i < seconds; i++) {
      const res = await fetch(url, { credentials: "same-origin" });
      const json = await res.json();
      if (json.error) say(json.error);
      if (until(json)) return json;
      await sleep(1000);
    }
    throw new Error(`timed out waiting for ${what}`);
  }

  async function mined(hash) {
    for (let i = 0; i < 120; i++) {
      const receipt = await window.ethereum.request({ method: "eth_getTransactionReceipt", params: [hash] });
      if (receipt) {
        if (receipt.status !== "0x1") throw new Error(`transaction ${hash} reverted`);
        return receipt;
      }
      await sleep(1000);
    }
    throw new Error(`transaction ${hash} was not mined`);
  }

  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const [from] = await window.ethereum.request({ method: "eth_requestAccounts" });
      say(`Registering the job to ${from}…`);
      await post(from);
      const ready = await poll((s) => s.registered && s.calls.length === 2, "the job's registration");
      const chainId = await window.ethereum.request({ method: "eth_chainId" });
      if (Number(chainId) !== ready.chain_id) {
        await window.ethereum.request({
          method: "wallet_switchEthereumChain",
          params: [{ chainId: "0x" + ready.chain_id.toString(16) }],
        });
      }
      for (const [i, call] of ready.calls.entries()) {
        say(i === 0 ? "Approve the ledger to take the budget in your wallet…" : "Confirm the deposit in your wallet…");
        const hash = await window.ethereum.request({
          method: "eth_sendTransaction",
          params: [{ from, to: call.to, data: call.data }],
        });
        await mined(hash);
      }
      say("Deposit sent; waiting for the platform to see it…");
      await post(from);
      await poll((s) => s.status === "funded", "the deposit");
      location.reload();
    } catch (err) {
      say(`Deposit not made: ${err.message || err}`);
      button.disabled = false;
    }
  });
})();
