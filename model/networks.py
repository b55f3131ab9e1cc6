"""PyTorch networks. Each maps ``(user_idx, item_idx)`` index tensors of shape (b,) to scores (b,).

Ranking networks also expose ``rows(user_idx, item_idx)``: the embedding rows a batch touches, so the
training loop can put an L2 penalty on them (see :mod:`model.losses`), and ``score_all(user_idx)``:
(b, I) scores of the whole catalogue. Dense layers (the output neuron, the MLP tower) are regularised
through the optimiser's weight decay instead.
"""

from __future__ import annotations

import torch
from torch import nn

from model.autoencoder import AUTOENCODERS, AutoEncoder
from model.config import MAX_WIDTH
from model.sequence import SEQUENCE_KINDS, build_sequence_network


class BiasedMF(nn.Module):
    """Biased matrix factorization: ``r_ui = mu + b_u + b_i + U_u . I_i``.

    The course's MF minimises ``sum over observed (u,i) of (R_ui - U_u . I_i)^2``; the global mean and
    the biases take out the per-user and per-item offsets so the factors model only the interaction.
    """

    def __init__(self, num_users: int, num_items: int, dim: int, init_std: float = 0.1, global_mean: float = 0.0):
        super().__init__()
        self.user_factors = nn.Embedding(num_users, dim)
        self.item_factors = nn.Embedding(num_items, dim)
        self.user_bias = nn.Embedding(num_users, 1)
        self.item_bias = nn.Embedding(num_items, 1)
        self.global_bias = nn.Parameter(torch.tensor(float(global_mean)))
        nn.init.normal_(self.user_factors.weight, 0.0, init_std)
        nn.init.normal_(self.item_factors.weight, 0.0, init_std)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

    def forward(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        dot = (self.user_factors(user_idx) * self.item_factors(item_idx)).sum(-1)  # (b,)
        return self.global_bias + self.user_bias(user_idx).squeeze(-1) + self.item_bias(item_idx).squeeze(-1) + dot

    def penalty(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """Per-example L2 of the rows the batch touches, averaged over the batch (as in Funk SVD's SGD)."""
        sq = (
            self.user_factors(user_idx).pow(2).sum(-1)
            + self.item_factors(item_idx).pow(2).sum(-1)
            + self.user_bias(user_idx).squeeze(-1).pow(2)
            + self.item_bias(item_idx).squeeze(-1).pow(2)
        )
        return sq.mean()

    def rows(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(user rows, item rows) of embeddings this batch touches, each a list of (b, *) tensors.

        Biases are left out: for ranking losses they carry popularity, which an L2 prior would only blunt.
        """
        return [self.user_factors(user_idx)], [self.item_factors(item_idx)]

    def score_all(self, user_idx: torch.Tensor) -> torch.Tensor:
        """Scores of every item for each user, (b, I): the full-catalogue logits of the softmax loss."""
        return (
            self.user_factors(user_idx) @ self.item_factors.weight.T
            + self.item_bias.weight.view(1, -1)  # a view, not .T: its gradient stays contiguous (DDP buckets)
            + self.user_bias(user_idx)
            + self.global_bias
        )


class MFWithRanking(BiasedMF):
    """A rating model (biased MF on MSE) carrying a second, ranking MF trained on a ranking loss.

    ``forward`` is the rating; ``ranking`` (its own :class:`BiasedMF`, state keys ``ranking.*``) orders
    items for ``/recommend``. Ranking by predicted rating recommends obscure items a few people loved,
    which is poor at top-k (nDCG@10 < 0.1 on MovieLens); a ranking loss over the same rows is not.
    """

    def __init__(self, num_users: int, num_items: int, dim: int, rank_dim: int, global_mean: float = 0.0):
        super().__init__(num_users, num_items, dim, global_mean=global_mean)
        self.ranking = BiasedMF(num_users, num_items, rank_dim)


class GMF(nn.Module):
    """The course's generalised MF: ``sigmoid(h . (p_u * q_i) + b + b_i)``, one output neuron over the product.

    ``forward`` returns the logit (the sigmoid lives in the loss, for numerical stability). The per-item
    bias ``b_i`` is our addition: it absorbs popularity so the factors model taste.
    """

    def __init__(self, num_users: int, num_items: int, dim: int, init_std: float = 0.1):
        super().__init__()
        self.user_factors = nn.Embedding(num_users, dim)
        self.item_factors = nn.Embedding(num_items, dim)
        self.item_bias = nn.Embedding(num_items, 1)
        self.output = nn.Linear(dim, 1)
        nn.init.normal_(self.user_factors.weight, 0.0, init_std)
        nn.init.normal_(self.item_factors.weight, 0.0, init_std)
        nn.init.zeros_(self.item_bias.weight)
        nn.init.ones_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        product = self.user_factors(user_idx) * self.item_factors(item_idx)  # (b, d)
        return self.output(product).squeeze(-1) + self.item_bias(item_idx).squeeze(-1)

    def rows(self, user_idx, item_idx):
        return [self.user_factors(user_idx)], [self.item_factors(item_idx)]

    def score_all(self, user_idx: torch.Tensor) -> torch.Tensor:
        weighted = self.user_factors(user_idx) * self.output.weight  # (b, d): h folded into the user side
        return weighted @ self.item_factors.weight.T + self.item_bias.weight.view(1, -1) + self.output.bias


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class NeuMF(nn.Module):
    """Neural MF (He et al. 2017): a GMF branch and an MLP tower over concatenated embeddings, fused.

    ``layers`` are the tower's widths; its input is the concatenation of a user and an item embedding of
    ``layers[0] // 2`` each. The output neuron reads ``[p_u * q_i, tower(...)]`` and gives the logit.
    Not a dot product, so serving scores it with a torch forward pass over the catalogue.
    """

    def __init__(self, num_users: int, num_items: int, dim: int, layers: tuple[int, ...], activation: str = "relu",
                 init_std: float = 0.1):  # fmt: skip
        super().__init__()
        half = max(layers[0] // 2, 1)
        self.gmf_user = nn.Embedding(num_users, dim)
        self.gmf_item = nn.Embedding(num_items, dim)
        self.mlp_user = nn.Embedding(num_users, half)
        self.mlp_item = nn.Embedding(num_items, half)
        for emb in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(emb.weight, 0.0, init_std)
        tower: list[nn.Module] = []
        width = 2 * half
        for size in layers[1:]:
            tower += [nn.Linear(width, size), ACTIVATIONS[activation]()]
            width = size
        self.tower = nn.Sequential(*tower)
        self.output = nn.Linear(dim + width, 1)

    def forward(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        gmf = self.gmf_user(user_idx) * self.gmf_item(item_idx)  # (b, dim)
        mlp = self.tower(torch.cat([self.mlp_user(user_idx), self.mlp_item(item_idx)], -1))  # (b, layers[-1])
        return self.output(torch.cat([gmf, mlp], -1)).squeeze(-1)

    def rows(self, user_idx, item_idx):
        return [self.gmf_user(user_idx), self.mlp_user(user_idx)], [self.gmf_item(item_idx), self.mlp_item(item_idx)]

    def score_items(self, gmf_user: torch.Tensor, mlp_user: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """Logits (n, m) of items (m,) for n users given by their embeddings (n, dim) and (n, layers[0] // 2)."""
        n, m = len(gmf_user), len(item_idx)
        gmf = (gmf_user[:, None, :] * self.gmf_item(item_idx)[None]).reshape(n * m, -1)
        pair = torch.cat([mlp_user[:, None, :].expand(n, m, -1), self.mlp_item(item_idx)[None].expand(n, m, -1)], -1)
        mlp = self.tower(pair.reshape(n * m, -1))
        return self.output(torch.cat([gmf, mlp], -1)).view(n, m)

    def score_all(self, user_idx: torch.Tensor) -> torch.Tensor:
        """(b, I): every user paired with every item (b * I rows through the tower)."""
        items = torch.arange(self.gmf_item.num_embeddings, device=user_idx.device)
        return self.score_items(self.gmf_user(user_idx), self.mlp_user(user_idx), items)


class MFEnsemble(nn.Module):
    """``members`` independent :class:`BiasedMF` models of size ``member_dim``, trained side by side.

    Each member sees the same batches but has its own loss (their gradients do not mix), so this is
    seed averaging at the cost of one wide model. The prediction is the members' mean, which is exactly
    one :class:`BiasedMF` of size ``members * member_dim`` (see :meth:`merged`); that is what is saved
    and served. The global bias is shared.
    """

    def __init__(self, num_users: int, num_items: int, members: int, member_dim: int, init_std: float = 0.1,
                 global_mean: float = 0.0):  # fmt: skip
        super().__init__()
        self.members, self.member_dim = members, member_dim
        self.user_factors = nn.Embedding(num_users, members * member_dim)
        self.item_factors = nn.Embedding(num_items, members * member_dim)
        self.user_bias = nn.Embedding(num_users, members)
        self.item_bias = nn.Embedding(num_items, members)
        self.global_bias = nn.Parameter(torch.tensor(float(global_mean)))
        nn.init.normal_(self.user_factors.weight, 0.0, init_std)
        nn.init.normal_(self.item_factors.weight, 0.0, init_std)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

    def member_outputs(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """Every member's score, shape (b, members)."""
        shape = (len(user_idx), self.members, self.member_dim)
        dot = (self.user_factors(user_idx).view(shape) * self.item_factors(item_idx).view(shape)).sum(-1)
        return self.global_bias + self.user_bias(user_idx) + self.item_bias(item_idx) + dot

    def forward(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        return self.member_outputs(user_idx, item_idx).mean(-1)

    @torch.no_grad()
    def merged(self) -> BiasedMF:
        """The equivalent single :class:`BiasedMF` (factors scaled by ``1/sqrt(members)``, biases averaged)."""
        scale = self.members**-0.5
        net = BiasedMF(self.user_bias.num_embeddings, self.item_bias.num_embeddings, self.members * self.member_dim)
        net.user_factors.weight.copy_(self.user_factors.weight * scale)
        net.item_factors.weight.copy_(self.item_factors.weight * scale)
        net.user_bias.weight.copy_(self.user_bias.weight.mean(-1, keepdim=True))
        net.item_bias.weight.copy_(self.item_bias.weight.mean(-1, keepdim=True))
        net.global_bias.copy_(self.global_bias)
        return net


MODEL_KINDS = ("mf", "gmf", "neumf", *AUTOENCODERS, *SEQUENCE_KINDS)


def parse_layers(spec: str) -> tuple[int, ...]:
    """``"64,32,16"`` -> (64, 32, 16); at least two positive widths (the tower's input and one layer)."""
    try:
        layers = tuple(int(part) for part in str(spec).split(","))
    except ValueError:
        raise ValueError(f"layers must be comma-separated integers, got {spec!r}") from None
    if len(layers) < 2 or min(layers) < 2:
        raise ValueError(f"layers needs at least two widths >= 2, got {spec!r}")
    if max(layers) > MAX_WIDTH:
        raise ValueError(f"layers must be at most {MAX_WIDTH} wide, got {spec!r}")
    return layers


def build_network(kind: str, num_users: int, num_items: int, config, global_mean: float = 0.0) -> nn.Module:
    """Construct an untrained network of the given kind with the sizes a (resolved) ``TrainConfig`` names."""
    if kind == "mf":
        if config.loss == "mse" and config.rank_loss != "none":
            return MFWithRanking(num_users, num_items, config.dim, config.rank_dim, global_mean=global_mean)
        # A ranking MF starts near zero (std 0.01): on MovieLens this validates better than 0.1 (0.274 vs 0.266
        # nDCG@10 on a split of the training data), as the softmax's early epochs then learn popularity first.
        init_std = 0.1 if config.loss in ("mse", "auto") else 0.01
        return BiasedMF(num_users, num_items, config.dim, init_std=init_std, global_mean=global_mean)
    if kind == "gmf":
        return GMF(num_users, num_items, config.dim)
    if kind == "neumf":
        return NeuMF(num_users, num_items, config.dim, parse_layers(config.layers), config.activation)
    if kind in AUTOENCODERS:
        return AutoEncoder(num_users, num_items, config.dim, config.hidden, variational=kind == "vae")
    if kind in SEQUENCE_KINDS:  # no user table: a user is the items they touched last (model.sequence)
        return build_sequence_network(kind, num_items, config)
    raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
