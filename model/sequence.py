"""Sequence networks: the next item from the items a user touched last (GRU4Rec, Caser, SASRec).

Each reads a batch of left-padded windows ``seq`` (b, L) int64 of item indices, oldest first, ``-1`` for
padding (:mod:`model.sequence_data`), and gives a representation ``h`` (b, d) of "what comes next";
an item's score is ``h . E_i + b_i`` with ``E`` the (shared) item embedding table and ``b`` an item bias,
so serving ranks a known user with one matrix-vector product over precomputed ``h`` (``model.serving_arrays``)
and a new visitor's history with one numpy forward pass (``model.sequence_numpy``, which mirrors these
modules weight for weight).

``hidden(seq)`` (b, L, d) is the representation at every position (GRU4Rec, SASRec are causal, so
position t sees items up to t): training puts a loss on every position at once. Caser reads a fixed window
and predicts once (``hidden`` is not defined for it).
"""

from __future__ import annotations

import torch
from torch import nn

SEQUENCE_KINDS = ("gru4rec", "caser", "sasrec")
CASER_HORIZONTAL = 16  # horizontal filters per height 1..L
CASER_VERTICAL = 4  # vertical filters


class _SequenceNet(nn.Module):
    """The shared item side: embeddings (I, d) used for input and output, an output bias per item."""

    causal = True

    def __init__(self, num_items: int, dim: int, max_len: int, dropout: float):
        super().__init__()
        self.max_len = max_len
        self.item_embedding = nn.Embedding(num_items, dim)
        self.item_bias = nn.Embedding(num_items, 1)
        nn.init.normal_(self.item_embedding.weight, 0.0, dim**-0.5)
        nn.init.zeros_(self.item_bias.weight)
        self.dropout = nn.Dropout(dropout)

    def embed(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(item vectors (b, L, d) with zeros at padding, mask (b, L) bool of real items)."""
        mask = seq >= 0
        return self.item_embedding(seq.clamp(min=0)) * mask.unsqueeze(-1), mask

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """(b, d): the representation after the newest item (the last column)."""
        return self.hidden(seq)[:, -1]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Scores of every item, (..., I), for representations (..., d)."""
        return h @ self.item_embedding.weight.T + self.item_bias.weight.view(-1)


class GRU4Rec(_SequenceNet):
    """Hidasi et al. 2016: item embeddings -> one GRU layer (recurrent) -> a dense layer -> next-item scores."""

    def __init__(self, num_items: int, dim: int, max_len: int, dropout: float = 0.2):
        super().__init__(num_items, dim, max_len, dropout)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.dense = nn.Linear(dim, dim)

    def hidden(self, seq: torch.Tensor) -> torch.Tensor:
        x, _ = self.embed(seq)
        out, _ = self.gru(self.dropout(x))  # padding runs through the GRU as zero inputs, here and in numpy
        return self.dense(self.dropout(out))


class Caser(_SequenceNet):
    """Tang and Wang 2018: horizontal (heights 1..L, max-pooled over time) and vertical convolutions over
    the (L, d) embedding matrix of the last L items -> a dense layer (ReLU). Without the paper's user
    embedding, so that a visitor's history is scored by the same network as a known user's."""

    causal = False

    def __init__(self, num_items: int, dim: int, max_len: int, dropout: float = 0.2):
        super().__init__(num_items, dim, max_len, dropout)
        self.horizontal = nn.ModuleList(nn.Conv2d(1, CASER_HORIZONTAL, (h, dim)) for h in range(1, max_len + 1))
        self.vertical = nn.Conv2d(1, CASER_VERTICAL, (max_len, 1))
        self.dense = nn.Linear(CASER_HORIZONTAL * max_len + CASER_VERTICAL * dim, dim)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        x, _ = self.embed(seq)
        x = x.unsqueeze(1)  # (b, 1, L, d)
        pooled = [torch.relu(conv(x).squeeze(3)).amax(dim=2) for conv in self.horizontal]  # each (b, n_h)
        vertical = self.vertical(x).flatten(1)  # (b, n_v * d)
        return torch.relu(self.dense(self.dropout(torch.cat([*pooled, vertical], 1))))


class SASRec(_SequenceNet):
    """Kang and McAuley 2018: item + position embeddings -> causal self-attention blocks (pre-norm,
    ``x + attention(LN(x))``, ``x + FFN(LN(x))``) -> a final layer norm. Padding is never attended to."""

    def __init__(self, num_items: int, dim: int, max_len: int, blocks: int = 2, heads: int = 1,
                 dropout: float = 0.2):  # fmt: skip
        super().__init__(num_items, dim, max_len, dropout)
        if dim % heads:
            raise ValueError(f"--dim {dim} must be a multiple of --heads {heads}")
        self.heads = heads
        self.position_embedding = nn.Embedding(max_len, dim)
        nn.init.normal_(self.position_embedding.weight, 0.0, dim**-0.5)
        self.blocks = nn.ModuleList(_Block(dim, dropout) for _ in range(blocks))
        self.final_norm = nn.LayerNorm(dim)

    def hidden(self, seq: torch.Tensor) -> torch.Tensor:
        x, mask = self.embed(seq)
        length = seq.shape[1]
        positions = self.position_embedding.weight[self.max_len - length :]  # right-aligned: newest at L-1
        x = self.dropout((x * x.shape[-1] ** 0.5 + positions) * mask.unsqueeze(-1))
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
        allowed = causal & mask[:, None, :]  # (b, L, L): earlier real items only
        bias = torch.zeros(allowed.shape, device=seq.device).masked_fill(~allowed, -1e9).unsqueeze(1)
        for block in self.blocks:
            x = block(x, bias, self.heads) * mask.unsqueeze(-1)
        return self.final_norm(x)


class _Block(nn.Module):
    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff1, self.ff2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, heads: int) -> torch.Tensor:
        b, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) * (dim // heads) ** -0.5 + bias, dim=-1)  # (b, H, L, L)
        attended = (self.dropout(weights) @ v).transpose(1, 2).reshape(b, length, dim)
        x = x + self.dropout(self.proj(attended))
        return x + self.dropout(self.ff2(torch.relu(self.ff1(self.norm2(x)))))


def build_sequence_network(kind: str, num_items: int, config) -> _SequenceNet:
    """An untrained sequence network of ``kind`` with the sizes a resolved ``TrainConfig`` names."""
    if kind == "gru4rec":
        return GRU4Rec(num_items, config.dim, config.max_len, config.dropout)
    if kind == "caser":
        return Caser(num_items, config.dim, config.max_len, config.dropout)
    if kind == "sasrec":
        return SASRec(num_items, config.dim, config.max_len, config.blocks, config.heads, config.dropout)
    raise ValueError(f"unknown sequence kind {kind!r}; choose one of {', '.join(SEQUENCE_KINDS)}")
