
import pytest
import torch

from medidiff.model.noise import make_noise


@pytest.mark.parametrize("kind", ["gaussian", "simplex", "coarse"])
def test_noise_unit_variance_and_seeded(kind):
    shape = (2, 1, 24, 28, 20)
    a = make_noise(kind, shape, torch.Generator().manual_seed(3))
    b = make_noise(kind, shape, torch.Generator().manual_seed(3))
    c = make_noise(kind, shape, torch.Generator().manual_seed(4))
    assert a.shape == shape and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    for i in range(2):
        assert abs(float(a[i].mean())) < 0.1
        assert abs(float(a[i].std()) - 1.0) < 0.05
    assert not torch.equal(a[0], a[1])  # batch items differ


@pytest.mark.parametrize("kind", ["simplex", "coarse"])
def test_structured_noise_is_spatially_correlated(kind):
    z = make_noise(kind, (1, 1, 32, 32, 32), torch.Generator().manual_seed(0))[0, 0]
    g = make_noise("gaussian", (1, 1, 32, 32, 32), torch.Generator().manual_seed(0))[0, 0]

    def lag1(x):
        return float((x[1:] * x[:-1]).mean() / (x * x).mean())

    assert lag1(z) > 0.5
    assert abs(lag1(g)) < 0.1


def test_bad_kind_and_params():
    with pytest.raises(ValueError, match="unknown noise kind"):
        make_noise("pink", (1, 1, 8, 8, 8), torch.Generator())
    with pytest.raises(ValueError, match="bad parameters"):
        make_noise("coarse", (1, 1, 8, 8, 8), torch.Generator(), octaves=3)
    with pytest.raises(ValueError, match="B, C, D, H, W"):
        make_noise("gaussian", (8, 8, 8), torch.Generator())
