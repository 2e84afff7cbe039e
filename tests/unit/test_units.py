"""--limit values: absolute rates and percentages of the measured path."""

import pytest

from freight.errors import UsageError
from freight.units import Limit, parse_limit


def test_absolute_rates_and_off() -> None:
    assert parse_limit("20M") == Limit(rate=20 * 1024**2)
    assert parse_limit("512K/s") == Limit(rate=512 * 1024)
    assert parse_limit("off").unlimited
    assert parse_limit("0").unlimited


def test_percentages() -> None:
    assert parse_limit("50%") == Limit(percent=50.0)
    assert parse_limit(" 12.5% ").percent == 12.5
    assert parse_limit("100%").describe() == "100% of the measured bandwidth"


@pytest.mark.parametrize("bad", ["0%", "101%", "-5%", "half%", "%", "fast"])
def test_bad_limits_say_what_to_use(bad: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_limit(bad)
    assert "e.g." in info.value.message
