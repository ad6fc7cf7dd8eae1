"""Tensors a measure creates follow the device (and dtype) of what they meet: an edit's change is made where the hooked
activation is, an SAE computes where the SAE is, results come back to the CPU. Without a second device here, the meta
device stands in for the activation's device (what lives there must stay there: nothing on meta can come back) and
float64 for an SAE (or activations) kept in another format than the model."""

from __future__ import annotations

import pytest
import torch

from palimpsest.restoration.common import random_like
from palimpsest.restoration.sae_restoration import feature_change


class _SAE:
    """The two things feature_change reads of a sae-lens SAE: W_dec and encode (a ReLU encoder here)."""

    def __init__(self, d: int, d_sae: int, dtype=torch.float64):
        gen = torch.Generator().manual_seed(0)
        self.W_dec = torch.randn(d_sae, d, generator=gen, dtype=dtype)
        self.W_enc = torch.randn(d, d_sae, generator=gen, dtype=dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        assert x.device == self.W_enc.device and x.dtype == self.W_enc.dtype, (x.device, x.dtype)
        return torch.relu(x @ self.W_enc)


def test_a_random_control_direction_is_made_on_the_device_and_in_the_dtype_of_its_vector():
    vector = torch.randn(8, dtype=torch.float64)
    draw = random_like(vector, torch.Generator().manual_seed(3))
    assert draw.dtype == torch.float64 and float(draw.norm()) == pytest.approx(float(vector.norm()))
    same = random_like(vector.float(), torch.Generator().manual_seed(3))  # drawn on the CPU: the same direction
    torch.testing.assert_close(same, draw.float())
    on_meta = random_like(torch.empty(8, device="meta", dtype=torch.bfloat16), torch.Generator().manual_seed(3))
    assert on_meta.device.type == "meta" and on_meta.dtype == torch.bfloat16 and on_meta.shape == (8,)


def test_the_sae_restoring_change_is_computed_in_the_saes_format_and_returned_in_the_activations():
    sae, features = _SAE(6, 10), [1, 4, 7]
    z_expert, alphas = torch.tensor([0.5, 1.0, 2.0]), torch.tensor([1.0, 3.0])
    h = torch.randn(2, 3, 6)
    change = feature_change(sae, h, features, alphas, z_expert=z_expert)  # add mode, an SAE in float64
    expected = alphas[:, None, None].double() * (z_expert.double() @ sae.W_dec[features])
    assert change.dtype == h.dtype and change.shape == h.shape
    torch.testing.assert_close(change, expected.float().expand_as(h))
    h_pre = torch.randn(2, 3, 6)
    change = feature_change(sae, h, features, alphas, h_pre=h_pre)  # inject: encoded where the SAE is
    z = sae.encode(h_pre.double())[..., features] - sae.encode(h.double())[..., features]
    torch.testing.assert_close(change, (alphas[:, None, None].double() * (z @ sae.W_dec[features])).float())


def test_ra_sae_codes_are_computed_where_the_ra_sae_is_and_come_back_float32_on_the_cpu():
    from palimpsest.sae.blindspots import ra_codes, train_ra_sae

    acts = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    ra = train_ra_sae(acts, nb_concepts=16, top_k=2, n_points=32, epochs=1, batch_size=32, device="cpu")
    assert next(ra.parameters()).device.type == "cpu"
    codes = ra_codes(ra, acts.double())  # activations in another format than the RA-SAE go to its format
    assert codes.dtype == torch.float32 and codes.device.type == "cpu" and codes.shape == (64, 16)
    with torch.no_grad():
        torch.testing.assert_close(codes, ra(acts)[1].float())
    assert int((codes > 0).sum(-1).max()) <= 2
