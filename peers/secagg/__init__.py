"""Secure aggregation (Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving
Machine Learning"): the aggregator learns the sum of the participants' updates and nothing else
about any one of them, even when some participants drop out mid-round.

Scheme: each update is encoded as integers mod 2^64 and hidden under masks that look uniformly
random. Every pair of participants agrees (X25519) on a seed whose mask one adds and the other
subtracts, so pairwise masks cancel in the sum; each participant also adds a self mask. Both
secrets are Shamir-shared among the participants, so that once the masked updates are in, any
``threshold`` of them can help the server remove what is left: the self masks of those whose
update arrived, the pairwise masks of those who dropped out, never both for the same participant.

Threat model: honest-but-curious server and participants, with up to ``threshold - 1``
participants colluding with one another or with the server; they learn only the sum over at least
``threshold`` inputs. Not covered here (left to the integration that wires these steps into
rounds): encrypting and authenticating the shares between peers, signing the messages, and the
consistency round of the actively-secure variant (a lying server could otherwise tell different
participants different dropout sets). The choice of ``threshold`` is the integration's too: it
must exceed the number of colluders it guards against, a higher one tolerates fewer dropouts
(n - t at most), and the paper's active-security analysis takes t > 2n/3.

No network code: pure steps, deterministic given their random draws.

==============  ================================================================================
module          role
==============  ================================================================================
fixedpoint      floats <-> uint64 ring elements (scale 2^32), with an exact overflow bound per sum
prg             HKDF-SHA256 seed derivation (round and purpose bound) and AES-256-CTR expansion
shamir          t-of-n sharing of a 32-byte secret over GF(2^521 - 1)
protocol        ``Participant`` (keys, shares, mask, reveal) and the server's ``unmask``
tree            the same over a tree: groups with an aggregator each, a masked round among them
gossip          live rounds: masks per recipient, self-mask seeds shared and sealed, payload layouts
==============  ================================================================================
"""

from __future__ import annotations

from peers.secagg.fixedpoint import SCALE, SCALE_BITS, decode, encode, max_abs
from peers.secagg.protocol import Participant, SharePair, unmask

__all__ = ["SCALE", "SCALE_BITS", "Participant", "SharePair", "decode", "encode", "max_abs", "unmask"]
