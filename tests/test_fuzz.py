"""The quick fuzz run of issue 10: 2,000 seeded cases from bench/fuzz.py against a real server with tokens, on one
kept-alive connection; any failure names its SEED:INDEX for `python -m bench fuzz --replay`."""

from __future__ import annotations

import pytest
from bench import fuzz

pytestmark = pytest.mark.fuzz


def test_quick_fuzz_run_finds_no_5xx_reset_outside_file_or_leak() -> None:
    result = fuzz.run(requests=2000, seed=10)
    assert result.requests == 2000
    assert set(result.per_family) == set(fuzz.FAMILIES)
    assert result.server_errors == 0, result.failures
    assert result.resets == 0, result.failures
    assert result.timeouts == 0, result.failures
    assert result.outside_files == [], result.failures
    assert result.canary_leaks == 0, result.failures
    assert result.healthy_at_end
