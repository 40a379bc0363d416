"""Batch-first self-attention for torchvision's ViT blocks: nn.MultiheadAttention's maths, faster.

In train mode (or with grad enabled) ``nn.MultiheadAttention(batch_first=True)`` transposes its
input to sequence-first before the in-projection, so the (B*L, E) x (E, 3E) product runs as L
batched matmuls of B rows each; on the 2-core CPU that is ~25 % of a ViT-B/16 forward, and its
backward is as slow. ``BatchFirstSelfAttention`` computes the same thing (one matmul for q, k, v,
``scaled_dot_product_attention``, the out-projection) in the batch-first layout: same parameters,
same state-dict keys, same results up to float round-off. Queries that are not the keys
(``readout``'s class-token-only last block: one query row, every token's keys and values) take
one projection for q, one for k and v, and ``few_query_attention``. Self-attention in eval
without grad keeps torch's fused fast path; masks, attention weights and the like fall back to
torch too.
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
        plain = (key is value and query.dim() == 3 and not need_weights
                 and key_padding_mask is None and attn_mask is None and not is_causal)
        fused_path = query is key and not self.training and not torch.is_grad_enabled()
        if not plain or fused_path:
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)
        b, n, e = query.shape
        w, bias = self.in_proj_weight, self.in_proj_bias
        dropout = self.dropout if self.training else 0.0
        if query is key:
            q, k, v = self._heads(F.linear(query, w, bias), 3)
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            [q] = self._heads(F.linear(query, w[:e], bias[:e]), 1)
            k, v = self._heads(F.linear(key, w[e:], bias[e:]), 2)
            out = few_query_attention(q, k, v, dropout)
        out = F.linear(out.transpose(1, 2).reshape(b, n, e), self.out_proj.weight, self.out_proj.bias)
        return out, None

    def _heads(self, packed: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        """(B, L, parts * E) projections -> ``parts`` tensors of shape (B, heads, L, head_dim)."""
        b, n, _ = packed.shape
        return packed.view(b, n, parts, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)


def few_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v as two plain matmuls, for a handful of query rows.

    For one query (the class token) this costs next to nothing, and unlike the fused kernels its
    backward is deterministic on CUDA: with ``scaled_dot_product_attention`` here, reruns of the
    same seed differed on an H100 (benchmarks/gpu_fit_check.py).
    """
    weights = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)
    return F.dropout(weights, dropout) @ v


def _convertible(module: nn.Module) -> bool:
    return (type(module) is nn.MultiheadAttention and module.batch_first and module._qkv_same_embed_dim
            and module.in_proj_bias is not None and module.bias_k is None and not module.add_zero_attn)


def use_batch_first_attention(model: nn.Module) -> int:
    """Switch every plain batch-first ``nn.MultiheadAttention`` in ``model`` in place; returns how many.

    Only the class changes: the parameter objects (and so an optimiser holding them) stay.
    """
    found = [m for m in model.modules() if _convertible(m)]
    for module in found:
        module.__class__ = BatchFirstSelfAttention
    return len(found)
