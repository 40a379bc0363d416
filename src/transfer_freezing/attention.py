"""Batch-first self-attention for torchvision's ViT blocks: nn.MultiheadAttention's maths, faster.

In train mode (or with grad enabled) ``nn.MultiheadAttention(batch_first=True)`` transposes its
input to sequence-first before the in-projection, so the (B*L, E) x (E, 3E) product runs as L
batched matmuls of B rows each; on the 2-core CPU that is ~25 % of a ViT-B/16 forward, and its
backward is as slow. ``BatchFirstSelfAttention`` computes the same thing (one matmul for q, k, v,
``scaled_dot_product_attention``, the out-projection) in the batch-first layout: same parameters,
same state-dict keys, same results up to float round-off. Eval without grad keeps torch's fused
fast path; anything but plain self-attention (masks, attention weights, ...) falls back to it too.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BatchFirstSelfAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose training-time self-attention keeps the batch-first layout."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        plain = (query is key and key is value and query.dim() == 3 and not need_weights
                 and key_padding_mask is None and attn_mask is None and not is_causal)
        fused_path = not self.training and not torch.is_grad_enabled()
        if not plain or fused_path:
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)
        b, n, e = query.shape
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        out = F.linear(out.transpose(1, 2).reshape(b, n, e), self.out_proj.weight, self.out_proj.bias)
        return out, None


def _convertible(module: nn.Module) -> bool:
    return (type(module) is nn.MultiheadAttention and module.batch_first and module._qkv_same_embed_dim
            and module.bias_k is None and not module.add_zero_attn)


def use_batch_first_attention(model: nn.Module) -> int:
    """Switch every plain batch-first ``nn.MultiheadAttention`` in ``model`` in place; returns how many.

    Only the class changes: the parameter objects (and so an optimiser holding them) stay.
    """
    found = [m for m in model.modules() if _convertible(m)]
    for module in found:
        module.__class__ = BatchFirstSelfAttention
    return len(found)
