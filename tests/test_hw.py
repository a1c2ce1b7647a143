"""Hardware detection (peers.hw)."""

import json

from peers.hw import detect_hardware


def test_detect_hardware_keys_and_types():
    hw = detect_hardware()
    assert set(hw) == {"cpu", "cores", "ram_gb", "gpus", "cuda", "torch", "os"}
    assert isinstance(hw["cpu"], str) and hw["cpu"]
    assert isinstance(hw["cores"], int) and hw["cores"] >= 1
    assert isinstance(hw["ram_gb"], float) and hw["ram_gb"] > 0
    assert isinstance(hw["cuda"], bool)
    assert isinstance(hw["gpus"], list) and (len(hw["gpus"]) > 0) == hw["cuda"]
    for g in hw["gpus"]:
        assert isinstance(g["name"], str) and g["vram_gb"] > 0
        major, minor = g["cuda_capability"].split(".")
        assert major.isdigit() and minor.isdigit()
    assert isinstance(hw["torch"], str) and isinstance(hw["os"], str)
    json.dumps(hw)  # must be serialisable for the wire
