// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {ERC20Burnable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Burnable.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title TrainingLedger
/// @notice Escrow and settlement of federated-learning jobs.
///
/// A coordinator registers a job (creator, config hash, stake, what happens to the remainder);
/// the creator funds it once with the full budget, which the ledger holds. Each round the
/// coordinator commits two Merkle roots (contributions, rewards) and the round's total; the sum
/// of committed totals never exceeds the budget and a round never pays beyond its total, so no
/// payout ever exceeds what the creator escrowed. Payees claim themselves (`claim`) or the
/// coordinator pays them in batches (`payBatch`); either way each reward leaf pays once.
/// Closing a job returns (or burns) the uncommitted budget; committed rounds stay claimable.
///
/// Paid flags: a bitmap per (job, round), leaf `i` at bit `i % 255` of word `i / 255`; bit 255 of
/// every word is no leaf's: it is the "primed" sentinel `primeClaims` sets, so the coordinator can
/// write a round's words once (from zero, the dear store) and every claim then updates a word that
/// is already non-zero, whichever claim comes first.
///
/// Reward leaf: keccak256(bytes.concat(keccak256(abi.encode(jobId, round, index, account, amount)))),
/// trees with sorted-pair hashing (OpenZeppelin MerkleProof). Storage keeps only roots and
/// totals; every detail an auditor needs is in the events.
contract TrainingLedger is AccessControl, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    bytes32 public constant COORDINATOR_ROLE = keccak256("COORDINATOR_ROLE");
    uint256 public constant MAX_BATCH = 200;
    /// @dev Leaves per word of the paid bitmap; bit 255 (PRIMED) marks a primed word, no leaf.
    uint256 private constant LEAVES_PER_WORD = 255;
    uint256 private constant PRIMED = 1 << 255;

    struct Job {
        address creator;
        bytes32 configHash;
        uint128 budget;
        uint128 committed;
        uint128 stakeRequired;
        bool funded;
        bool closed;
        bool burnRemainder;
    }

    struct Round {
        bytes32 contributionRoot;
        bytes32 rewardRoot; // non-zero once committed
        uint128 total;
        uint128 paid;
    }

    struct Stake {
        uint128 amount; // what is left of it (slashes are taken off)
        bool staked;
        bool released;
    }

    /// @dev The round a payout is for (kept in memory: fewer stack slots).
    struct Target {
        uint256 jobId;
        uint256 round;
        bytes32 root;
    }

    IERC20 public immutable token;

    mapping(uint256 jobId => Job) public jobs;
    mapping(uint256 jobId => mapping(uint256 round => Round)) public rounds;
    mapping(uint256 jobId => mapping(address operator => Stake)) public stakes;
    mapping(uint256 jobId => mapping(uint256 round => mapping(uint256 word => uint256))) private _paidBitmap;

    event JobRegistered(
        uint256 indexed jobId, address indexed creator, bytes32 configHash, uint256 stakeRequired, bool burnRemainder
    );
    event JobFunded(uint256 indexed jobId, address indexed creator, uint256 budget);
    event RoundCommitted(
        uint256 indexed jobId,
        uint256 indexed round,
        bytes32 modelHash,
        bytes32 contributionRoot,
        bytes32 rewardRoot,
        uint256 total
    );
    event RewardPaid(
        uint256 indexed jobId, uint256 indexed round, address indexed account, uint256 index, uint256 amount
    );
    event JobClosed(uint256 indexed jobId, uint256 refunded, uint256 burnt);
    event Staked(uint256 indexed jobId, address indexed operator, uint256 amount);
    event Slashed(uint256 indexed jobId, address indexed operator, uint256 amount, bytes32 evidenceHash);
    event StakeReleased(uint256 indexed jobId, address indexed operator, uint256 amount);

    error ZeroAddress();
    error JobExists(uint256 jobId);
    error UnknownJob(uint256 jobId);
    error NotCreator(uint256 jobId, address caller);
    error ConfigMismatch(uint256 jobId);
    error AlreadyFunded(uint256 jobId);
    error NotFunded(uint256 jobId);
    error JobIsClosed(uint256 jobId);
    error JobNotClosed(uint256 jobId);
    error ZeroAmount();
    error AmountTooLarge(uint256 amount);
    error ZeroRoot();
    error RoundExists(uint256 jobId, uint256 round);
    error UnknownRound(uint256 jobId, uint256 round);
    error BudgetExceeded(uint256 jobId, uint256 committed, uint256 total, uint256 budget);
    error RoundTotalExceeded(uint256 jobId, uint256 round, uint256 paid, uint256 total);
    error AlreadyPaid(uint256 jobId, uint256 round, uint256 index);
    error InvalidProof(uint256 jobId, uint256 round, uint256 index);
    error LengthMismatch();
    error BatchTooLarge(uint256 size, uint256 max);
    error NoStakeRequired(uint256 jobId);
    error AlreadyStaked(uint256 jobId, address operator);
    error NotStaked(uint256 jobId, address operator);
    error StakeAlreadyReleased(uint256 jobId, address operator);
    error SlashExceedsStake(uint256 jobId, address operator, uint256 amount, uint256 remaining);

    constructor(IERC20 token_, address admin) {
        if (address(token_) == address(0) || admin == address(0)) revert ZeroAddress();
        token = token_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(COORDINATOR_ROLE, admin);
    }

    // -- jobs ----------------------------------------------------------------------------------

    /// @notice Reserve `jobId` for `creator` and the config it will fund (once per id).
    function registerJob(uint256 jobId, address creator, bytes32 configHash, uint256 stakeRequired, bool burnRemainder)
        external
        onlyRole(COORDINATOR_ROLE)
    {
        if (creator == address(0)) revert ZeroAddress();
        if (jobs[jobId].creator != address(0)) revert JobExists(jobId);
        Job storage job = jobs[jobId];
        job.creator = creator;
        job.configHash = configHash;
        job.stakeRequired = _u128(stakeRequired);
        job.burnRemainder = burnRemainder;
        emit JobRegistered(jobId, creator, configHash, stakeRequired, burnRemainder);
    }

    /// @notice The creator escrows the whole budget (needs an allowance for it), once.
    function fundJob(uint256 jobId, bytes32 configHash, uint256 budget) external nonReentrant {
        _fund(jobId, configHash, budget);
    }

    /// @notice fundJob with an ERC-2612 permit instead of a prior approve. A permit already used
    /// (e.g. front-run from the mempool) is ignored: the transfer then needs the allowance it set.
    function fundJobWithPermit(
        uint256 jobId,
        bytes32 configHash,
        uint256 budget,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant {
        try IERC20Permit(address(token)).permit(msg.sender, address(this), budget, deadline, v, r, s) {} catch {}
        _fund(jobId, configHash, budget);
    }

    function _fund(uint256 jobId, bytes32 configHash, uint256 budget) private {
        Job storage job = jobs[jobId];
        address creator = job.creator;
        if (creator == address(0)) revert UnknownJob(jobId);
        if (msg.sender != creator) revert NotCreator(jobId, msg.sender);
        if (job.configHash != configHash) revert ConfigMismatch(jobId);
        if (job.funded) revert AlreadyFunded(jobId);
        if (job.closed) revert JobIsClosed(jobId);
        if (budget == 0) revert ZeroAmount();
        job.budget = _u128(budget);
        job.funded = true;
        token.safeTransferFrom(msg.sender, address(this), budget);
        emit JobFunded(jobId, msg.sender, budget);
    }

    /// @notice Commit a round's roots and total (once per round), within the remaining budget.
    function commitRound(
        uint256 jobId,
        uint256 round,
        bytes32 modelHash,
        bytes32 contributionRoot,
        bytes32 rewardRoot,
        uint256 total
    ) external onlyRole(COORDINATOR_ROLE) {
        Job storage job = jobs[jobId];
        if (!job.funded) revert NotFunded(jobId);
        if (job.closed) revert JobIsClosed(jobId);
        if (rewardRoot == bytes32(0)) revert ZeroRoot();
        Round storage r = rounds[jobId][round];
        if (r.rewardRoot != bytes32(0)) revert RoundExists(jobId, round);
        uint256 committed = job.committed;
        uint256 budget = job.budget;
        if (total > budget - committed) revert BudgetExceeded(jobId, committed, total, budget);
        job.committed = uint128(committed + total); // <= budget < 2**128
        r.contributionRoot = contributionRoot;
        r.rewardRoot = rewardRoot;
        r.total = uint128(total);
        emit RoundCommitted(jobId, round, modelHash, contributionRoot, rewardRoot, total);
    }

    /// @notice Close the job once: the budget no round committed goes back to the creator, or
    /// is burnt if the job said so. Committed rounds stay payable; stakes become releasable.
    function closeJob(uint256 jobId) external onlyRole(COORDINATOR_ROLE) nonReentrant {
        Job storage job = jobs[jobId];
        address creator = job.creator;
        if (creator == address(0)) revert UnknownJob(jobId);
        if (job.closed) revert JobIsClosed(jobId);
        job.closed = true;
        uint256 left = uint256(job.budget) - job.committed; // 0 when never funded
        uint256 refunded;
        uint256 burnt;
        if (left > 0) {
            if (job.burnRemainder) {
                burnt = left;
                ERC20Burnable(address(token)).burn(left);
            } else {
                refunded = left;
                token.safeTransfer(creator, left);
            }
        }
        emit JobClosed(jobId, refunded, burnt);
    }

    // -- payouts -------------------------------------------------------------------------------

    /// @notice Pay the caller its reward leaf `index` of `round` (once).
    function claim(uint256 jobId, uint256 round, uint256 index, uint256 amount, bytes32[] calldata proof)
        external
        nonReentrant
    {
        Target memory t = Target(jobId, round, _rewardRoot(jobId, round));
        if (!_pay(_paidBitmap[jobId][round], t, index, msg.sender, amount, proof)) {
            revert AlreadyPaid(jobId, round, index);
        }
        _addPaid(jobId, round, amount); // over the round's total: the whole claim reverts
    }

    /// @notice Pay up to MAX_BATCH reward leaves of `round`. Leaves already paid (by an earlier
    /// batch or a claim) are skipped without an event, so retrying a batch is harmless; an
    /// invalid proof reverts the whole batch.
    function payBatch(
        uint256 jobId,
        uint256 round,
        uint256[] calldata indexes,
        address[] calldata accounts,
        uint256[] calldata amounts,
        bytes32[][] calldata proofs
    ) external onlyRole(COORDINATOR_ROLE) nonReentrant {
        if (indexes.length > MAX_BATCH) revert BatchTooLarge(indexes.length, MAX_BATCH);
        if (accounts.length != indexes.length || amounts.length != indexes.length || proofs.length != indexes.length) {
            revert LengthMismatch();
        }
        Target memory t = Target(jobId, round, _rewardRoot(jobId, round));
        uint256 sum = _payAll(t, indexes, accounts, amounts, proofs);
        if (sum > 0) _addPaid(jobId, round, sum);
    }

    function _payAll(
        Target memory t,
        uint256[] calldata indexes,
        address[] calldata accounts,
        uint256[] calldata amounts,
        bytes32[][] calldata proofs
    ) private returns (uint256 sum) {
        mapping(uint256 => uint256) storage bitmap = _paidBitmap[t.jobId][t.round];
        for (uint256 i; i < indexes.length; ++i) {
            uint256 amount = amounts[i];
            if (_pay(bitmap, t, indexes[i], accounts[i], amount, proofs[i])) sum += amount;
        }
    }

    /// @notice Write the paid-bitmap words covering leaves [0, leaves) of a committed round with
    /// the PRIMED sentinel (words already non-zero are left as they are), so that no claim pays
    /// for a word written from zero. Marks no leaf paid; priming again is harmless. The
    /// coordinator calls it, one storage word per 255 leaves, before opening a round to claims.
    function primeClaims(uint256 jobId, uint256 round, uint256 leaves) external onlyRole(COORDINATOR_ROLE) {
        _rewardRoot(jobId, round); // committed rounds only
        mapping(uint256 => uint256) storage bitmap = _paidBitmap[jobId][round];
        for (uint256 w; w * LEAVES_PER_WORD < leaves; ++w) {
            if (bitmap[w] == 0) bitmap[w] = PRIMED;
        }
    }

    /// @notice Whether reward leaf `index` of `round` has been paid.
    function isPaid(uint256 jobId, uint256 round, uint256 index) external view returns (bool) {
        return _paidBitmap[jobId][round][index / LEAVES_PER_WORD] & (1 << (index % LEAVES_PER_WORD)) != 0;
    }

    /// @dev Pays one leaf unless its bit is set already (then returns false); reverts on a bad proof.
    function _pay(
        mapping(uint256 => uint256) storage bitmap,
        Target memory t,
        uint256 index,
        address account,
        uint256 amount,
        bytes32[] calldata proof
    ) private returns (bool) {
        uint256 slot = index / LEAVES_PER_WORD;
        uint256 word = bitmap[slot];
        uint256 bit = 1 << (index % LEAVES_PER_WORD); // never PRIMED
        if (word & bit != 0) return false;
        if (!MerkleProof.verifyCalldata(proof, t.root, rewardLeaf(t.jobId, t.round, index, account, amount))) {
            revert InvalidProof(t.jobId, t.round, index);
        }
        bitmap[slot] = word | bit;
        _transfer(account, amount);
        emit RewardPaid(t.jobId, t.round, account, index, amount);
        return true;
    }

    /// @dev token.transfer(to, amount), which must return true; allocates no memory (loops).
    function _transfer(address to, uint256 amount) private {
        address t = address(token);
        bool ok;
        assembly ("memory-safe") {
            let p := mload(0x40)
            mstore(p, 0xa9059cbb00000000000000000000000000000000000000000000000000000000)
            mstore(add(p, 0x04), and(to, 0xffffffffffffffffffffffffffffffffffffffff))
            mstore(add(p, 0x24), amount)
            if iszero(call(gas(), t, 0, p, 0x44, 0x00, 0x20)) {
                returndatacopy(p, 0x00, returndatasize()) // bubble the token's error
                revert(p, returndatasize())
            }
            ok := and(gt(returndatasize(), 0x1f), eq(mload(0x00), 1))
        }
        if (!ok) revert SafeERC20.SafeERC20FailedOperation(t);
    }

    function _rewardRoot(uint256 jobId, uint256 round) private view returns (bytes32 root) {
        root = rounds[jobId][round].rewardRoot;
        if (root == bytes32(0)) revert UnknownRound(jobId, round);
    }

    function _addPaid(uint256 jobId, uint256 round, uint256 amount) private {
        Round storage r = rounds[jobId][round];
        uint256 paid = uint256(r.paid) + amount;
        if (paid > r.total) revert RoundTotalExceeded(jobId, round, paid, r.total);
        r.paid = uint128(paid);
    }

    /// @notice The reward leaf, as the Python side builds it (platform/ledger/merkle.py).
    function rewardLeaf(uint256 jobId, uint256 round, uint256 index, address account, uint256 amount)
        public
        pure
        returns (bytes32 leaf)
    {
        // keccak256(bytes.concat(keccak256(abi.encode(jobId, round, index, account, amount)))),
        // in scratch memory above the free pointer (not bumped: nothing allocated per leaf).
        assembly ("memory-safe") {
            let p := mload(0x40)
            mstore(p, jobId)
            mstore(add(p, 0x20), round)
            mstore(add(p, 0x40), index)
            mstore(add(p, 0x60), and(account, 0xffffffffffffffffffffffffffffffffffffffff))
            mstore(add(p, 0x80), amount)
            mstore(0x00, keccak256(p, 0xa0))
            leaf := keccak256(0x00, 0x20)
        }
    }

    // -- stakes --------------------------------------------------------------------------------

    /// @notice An operator escrows exactly the job's stakeRequired (once per job).
    function stake(uint256 jobId) external nonReentrant {
        Job storage job = jobs[jobId];
        if (job.creator == address(0)) revert UnknownJob(jobId);
        if (job.closed) revert JobIsClosed(jobId);
        uint256 required = job.stakeRequired;
        if (required == 0) revert NoStakeRequired(jobId);
        Stake storage s = stakes[jobId][msg.sender];
        if (s.staked) revert AlreadyStaked(jobId, msg.sender);
        s.staked = true;
        s.amount = uint128(required);
        token.safeTransferFrom(msg.sender, address(this), required);
        emit Staked(jobId, msg.sender, required);
    }

    /// @notice Burn `amount` of an operator's remaining stake, with the evidence's hash.
    function slash(uint256 jobId, address operator, uint256 amount, bytes32 evidenceHash)
        external
        onlyRole(COORDINATOR_ROLE)
        nonReentrant
    {
        Stake storage s = stakes[jobId][operator];
        if (!s.staked) revert NotStaked(jobId, operator);
        if (amount == 0) revert ZeroAmount();
        uint256 remaining = s.amount;
        if (amount > remaining) revert SlashExceedsStake(jobId, operator, amount, remaining);
        s.amount = uint128(remaining - amount);
        ERC20Burnable(address(token)).burn(amount);
        emit Slashed(jobId, operator, amount, evidenceHash);
    }

    /// @notice After the job is closed, anyone may return an operator's remaining stake (once).
    function releaseStake(uint256 jobId, address operator) external nonReentrant {
        if (!jobs[jobId].closed) revert JobNotClosed(jobId);
        Stake storage s = stakes[jobId][operator];
        if (!s.staked) revert NotStaked(jobId, operator);
        if (s.released) revert StakeAlreadyReleased(jobId, operator);
        uint256 amount = s.amount;
        s.released = true;
        s.amount = 0;
        if (amount > 0) token.safeTransfer(operator, amount);
        emit StakeReleased(jobId, operator, amount);
    }

    function _u128(uint256 amount) private pure returns (uint128) {
        if (amount > type(uint128).max) revert AmountTooLarge(amount);
        return uint128(amount);
    }
}
