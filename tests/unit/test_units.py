"""--limit values: absolute rates and percentages of the measured path."""

import pytest

from freight.errors import UsageError
from freight.units import MAX_SIZE, Limit, parse_limit, parse_rate, parse_size


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


@pytest.mark.parametrize("text", ["9" * 400, "99999999999999999999T", "4097P", "5E"])
def test_sizes_beyond_4_eib_are_refused(text: str) -> None:
    """Hundreds of digits were once infinity, and int(infinity) failed."""
    if text in ("4097P", "5E"):  # not suffixes at all
        with pytest.raises(UsageError, match="not a size"):
            parse_size(text)
        return
    with pytest.raises(UsageError, match="too large: at most 4611686018427387904 bytes"):
        parse_size(text)
    with pytest.raises(UsageError, match="too large"):
        parse_rate(text)


def test_the_largest_size_is_accepted() -> None:
    assert parse_size("4194304T") == MAX_SIZE == 1 << 62
