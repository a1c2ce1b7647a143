// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title ModelRegistry
/// @notice Trained models by content hash, with who may use them: everyone (public), the owner
/// who registered it, and the users the owner granted access to.
contract ModelRegistry {
    struct Model {
        address owner;
        bool isPublic;
        bytes32 contentHash;
        string name;
    }

    /// @notice Models by id (1, 2, ...); id 0 is never used.
    mapping(uint256 modelId => Model) public models;
    uint256 public modelCount;
    mapping(uint256 modelId => mapping(address user => bool)) private _granted;

    event ModelRegistered(
        uint256 indexed modelId, address indexed owner, bytes32 contentHash, string name, bool isPublic
    );
    event AccessGranted(uint256 indexed modelId, address indexed user);
    event AccessRevoked(uint256 indexed modelId, address indexed user);

    error UnknownModel(uint256 modelId);
    error NotModelOwner(uint256 modelId, address caller);
    error ZeroAddress();

    /// @notice Register a model owned by the caller; returns its id.
    function registerModel(string calldata name, bytes32 contentHash, bool isPublic)
        external
        returns (uint256 modelId)
    {
        modelId = ++modelCount;
        models[modelId] = Model({owner: msg.sender, isPublic: isPublic, contentHash: contentHash, name: name});
        emit ModelRegistered(modelId, msg.sender, contentHash, name, isPublic);
    }

    function grantAccess(uint256 modelId, address user) external {
        _onlyOwner(modelId);
        if (user == address(0)) revert ZeroAddress();
        if (!_granted[modelId][user]) {
            _granted[modelId][user] = true;
            emit AccessGranted(modelId, user);
        }
    }

    function revokeAccess(uint256 modelId, address user) external {
        _onlyOwner(modelId);
        if (_granted[modelId][user]) {
            _granted[modelId][user] = false;
            emit AccessRevoked(modelId, user);
        }
    }

    /// @notice Public models: anyone; otherwise the owner and granted users. Unknown id: nobody.
    function hasAccess(uint256 modelId, address user) external view returns (bool) {
        Model storage m = models[modelId];
        if (m.owner == address(0)) return false;
        return m.isPublic || m.owner == user || _granted[modelId][user];
    }

    function _onlyOwner(uint256 modelId) private view {
        address owner = models[modelId].owner;
        if (owner == address(0)) revert UnknownModel(modelId);
        if (owner != msg.sender) revert NotModelOwner(modelId, msg.sender);
    }
}
