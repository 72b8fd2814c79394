"""The 12 (dis)similarities of ASLAN (TPAMI Table 3), checked against values worked by hand."""

import math

import numpy as np
import pytest

from c3d_extract.evaluation.aslan import measures

X1, X2 = np.array([[1.0, 0.0, 3.0]]), np.array([[1.0, 2.0, 1.0]])

# Worked by hand for x1 = (1, 0, 3), x2 = (1, 2, 1):
HAND = [
    4.0,                                             # 1  1*1 + 0*2 + 3*1
    2.0,                                             # 2  sqrt(4)
    math.sqrt(1 + 0 + math.sqrt(3)),                 # 3  sqrt(sqrt1 sqrt1 + sqrt0 sqrt2 + sqrt3 sqrt1)
    math.sqrt(1 / 2 + 0 / 2 + 3 / 4),                # 4  sqrt(sum x1 x2 / (x1 + x2))
    4 / (math.sqrt(10) * math.sqrt(6)),              # 5  cosine
    math.sqrt(0 / 2 + 4 / 2 + 4 / 4),                # 6  sqrt chi2
    0 + 2 + 2,                                       # 7  L1
    math.sqrt(0 + 2 + (math.sqrt(3) - 1) ** 2),      # 8  Hellinger
    math.sqrt(0 + 4 + 4),                            # 9  L2
    (3 * math.log(3) + 1e-10 * math.log(1e-10 / 2)   # 10 symmetric KL, 0 clipped to 1e-10
     + 2 * math.log(2 / 1e-10) + 1 * math.log(1 / 3)) / 2,
    1 / math.sqrt(2) + math.sqrt(2) / math.sqrt(2) + math.sqrt(3) / math.sqrt(4),  # 11
    (1 + 0 + 1) / (4 * 4),                           # 12 sum of minima / (sum x1 * sum x2)
]


@pytest.mark.parametrize("number", range(1, 13))
def test_measure_equals_the_hand_worked_value(number):
    assert measures(X1, X2)[0, number - 1] == pytest.approx(HAND[number - 1], rel=1e-9)


def test_guards_for_zero_sums_and_zero_vectors():
    x1, x2 = np.array([[0.0, 0.0]]), np.array([[0.0, 1.0]])
    m = measures(x1, x2)[0]
    assert m[3] == 0.0                      # 4: the 0/0 term counts 0, the other is 0/1
    assert m[4] == 0.0                      # 5: cosine with a zero vector is 0, not NaN
    assert m[5] == pytest.approx(1.0)       # 6: 0/0 -> 0, (0-1)^2/1 = 1
    assert m[10] == pytest.approx(1.0)      # 11: 0/0 -> 0, sqrt(1)/sqrt(1)
    assert m[11] == 0.0                     # 12: sum of x1 is 0 -> 0
    assert m[9] == pytest.approx(math.log(1 / 1e-10) / 2 + 1e-10 * math.log(1e-10) / 2)  # 10: clipped
    assert np.isfinite(m).all()


def test_pairs_are_rows_and_negative_inputs_stay_finite():
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 7)), rng.random((5, 7))
    batch = measures(a, b)
    for i in range(5):
        np.testing.assert_allclose(batch[i], measures(a[i:i + 1], b[i:i + 1])[0])
    assert np.isfinite(measures(a - 0.5, b - 0.5)).all()


def test_l1_normalisation_before_the_last_four():
    plain, l1 = measures(X1, X2)[0], measures(X1, X2, l1_last_four=True)[0]
    np.testing.assert_array_equal(plain[:8], l1[:8])
    assert l1[8] == pytest.approx(math.sqrt((1 / 4 - 1 / 4) ** 2 + (0 - 2 / 4) ** 2 + (3 / 4 - 1 / 4) ** 2))
    assert l1[11] == pytest.approx((1 / 4 + 0 + 1 / 4) / (1 * 1))
