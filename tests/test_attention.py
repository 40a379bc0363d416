"""Batch-first self-attention: torch's nn.MultiheadAttention results, same parameters and keys."""

import copy

import torch
from torch import nn

from transfer_freezing.model import attention
from transfer_freezing.model import registry as models


def _pair() -> tuple[nn.MultiheadAttention, nn.MultiheadAttention]:
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(48, 4, batch_first=True)
    fast = copy.deepcopy(ref)
    assert attention.use_batch_first_attention(fast) == 1
    return ref, fast


def test_training_forward_and_gradients_match_torch():
    ref, fast = _pair()
    x = torch.randn(3, 7, 48, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    out_ref, _ = ref(x, x, x, need_weights=False)
    out_fast, weights = fast(x2, x2, x2, need_weights=False)
    torch.testing.assert_close(out_fast, out_ref)
    out_ref.square().sum().backward()
    out_fast.square().sum().backward()
    torch.testing.assert_close(x2.grad, x.grad)
    torch.testing.assert_close(fast.in_proj_weight.grad, ref.in_proj_weight.grad)
    assert weights is None


def test_other_calls_fall_back_to_torch():
    ref, fast = _pair()
    q, kv = torch.randn(2, 5, 48), torch.randn(2, 6, 48)
    torch.testing.assert_close(fast(q, kv, kv)[1], ref(q, kv, kv)[1])  # cross-attention + weights


def test_vit_keeps_its_parameters_and_state_dict_keys():
    net = models.build("vit_demo", 10, image_size=32)
    before = {name: p for name, p in net.named_parameters()}
    assert attention.use_batch_first_attention(net) == 12
    assert dict(net.named_parameters()) == before  # the same objects: an optimiser keeps working
    assert isinstance(net.encoder.layers[0].self_attention, attention.BatchFirstSelfAttention)
