"""The counter-based generator: known answers, exact integer mapping, uniformity."""

import numpy as np
import pytest
from scipy import stats

from gpuale.rng import philox4x32, relocation_draws, uniform_below


@pytest.mark.parametrize(
    "counter, key, expected",
    [
        # Known-answer vectors of Random123 (kat_vectors, philox4x32 10 rounds).
        ([0, 0, 0, 0], 0, [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, 0xFFFFFFFFFFFFFFFF, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        (
            [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
            0x299F31D0A4093822,
            [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
        ),
    ],
)
def test_philox_known_answers(counter, key, expected):
    out = philox4x32(np.array(counter, dtype=np.uint32), key)
    assert [int(x) for x in out] == expected


def test_uniform_below_is_exact_integer_arithmetic():
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**32, size=(2000, 4), dtype=np.uint64).astype(np.uint32)
    for n in (1, 7, 228_483, 2**32 - 1):
        got = uniform_below(words, n)
        expected = [((int(w[1]) << 32 | int(w[0])) * n) >> 64 for w in words]
        assert got.tolist() == expected


def test_draws_depend_only_on_seed_permutation_and_focus():
    whole = relocation_draws(7, 0, 20, 30, 1000)
    pieces = np.vstack([relocation_draws(7, first, 5, 30, 1000) for first in range(0, 20, 5)])
    np.testing.assert_array_equal(whole, pieces)
    # A longer focus list does not change the draws of the first foci.
    np.testing.assert_array_equal(relocation_draws(7, 3, 2, 50, 1000)[:, :30], whole[3:5])
    assert not np.array_equal(relocation_draws(8, 0, 20, 30, 1000), whole)


def test_draws_are_uniform_over_choices():
    n = 50
    draws = relocation_draws(123, 0, 400, 250, n).ravel()  # 100,000 draws
    counts = np.bincount(draws, minlength=n)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_draws_are_independent_between_permutations():
    n = 1000
    draws = relocation_draws(5, 0, 2, 20000, n).astype(float)
    r = np.corrcoef(draws[0], draws[1])[0, 1]
    assert abs(r) < 4 / np.sqrt(20000)
    # Pairs (permutation 0, permutation 1) of the same focus are uniform over a 10 x 10 grid.
    cells = (draws[0] * 10 // n) * 10 + draws[1] * 10 // n
    assert stats.chisquare(np.bincount(cells.astype(int), minlength=100)).pvalue > 1e-3


def test_seed_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="seed"):
        philox4x32(np.zeros(4, np.uint32), -1)
