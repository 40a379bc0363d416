"""Class-token-only last ViT block: torchvision's logits and gradients, same parameters and keys."""

import copy

import pytest
import torch
from torch.nn import functional as F

from transfer_freezing.model import attention, freezing, readout
from transfer_freezing.model import registry as models


def _pair(mode: str, fast_attention: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    ref = models.build("vit_demo", 10, image_size=32)
    freezing.freeze(ref, freezing.prefixes("vit_demo", mode), freeze_bn_stats=True)
    fast = copy.deepcopy(ref)
    if fast_attention:
        attention.use_batch_first_attention(fast)
    assert readout.use_class_token_readout(fast) == 1
    return ref, fast


@pytest.mark.parametrize("fast_attention", [True, False])
@pytest.mark.parametrize("mode", ["freeze_none", "freeze_patch_0_5"])
def test_logits_and_gradients_match_the_full_forward(mode, fast_attention):
    ref, fast = _pair(mode, fast_attention)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 7, 9])
    for net in (ref, fast):
        F.cross_entropy(net(x), y).backward()
    torch.testing.assert_close(fast(x), ref(x))
    grads = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, grads.get(name), msg=name)
    fast.eval()
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x))


def test_training_steps_give_the_same_predictions():
    ref, fast = _pair("freeze_none", fast_attention=True)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    preds = []
    for net in (ref, fast):
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
        preds.append(net(x).argmax(1))
    assert torch.equal(preds[0], preds[1])


def test_parameters_and_state_dict_keys_stay():
    net = models.build("vit_demo", 10, image_size=32)
    before, keys = dict(net.named_parameters()), list(net.state_dict())
    assert readout.use_class_token_readout(net) == 1
    assert readout.use_class_token_readout(net) == 0  # already rewritten
    assert dict(net.named_parameters()) == before and list(net.state_dict()) == keys
    assert isinstance(net.encoder.layers[-1], readout.ClassTokenBlock)
    assert not isinstance(net.encoder.layers[-2], readout.ClassTokenBlock)
    assert net.encoder(torch.randn(2, 5, 192)).shape == (2, 1, 192)


def test_other_models_are_left_alone():
    assert readout.use_class_token_readout(models.build("resnet_demo", 10, image_size=32)) == 0
