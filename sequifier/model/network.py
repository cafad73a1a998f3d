"""The network: a causal transformer over categorical and real columns.

Only `nn.Module`s, in reading order: column encoders, rotary positions, attention, feed-forward,
block, the transformer, and the two export heads (generative and embedding). `ModelArgs` holds
everything needed to rebuild a model, so an exported bundle needs no config logic. Modules are
kept by position (the order of the columns in `ModelArgs`), never by column name: any name a
table can hold is a column name, while a module name may not be `type`, `items` or hold a dot.
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

VARIANCE_FLOOR = 1e-6  # the least variance a GaussianNLLLoss head predicts (softplus(raw) + floor)


@dataclass(frozen=True)
class ModelArgs:
    input_columns: tuple  # ((name, kind, n_classes or 0, width), ...) in input order
    target_columns: tuple  # ((name, kind, n_classes or 0), ...)
    seq_length: int
    dim_model: int = 64
    n_head: int = 4
    n_kv_heads: int = 4
    dim_feedforward: int = 256
    num_layers: int = 2
    activation_fn: str = "gelu"
    normalization: str = "layer_norm"
    norm_first: bool = True
    positional_encoding: str = "learned"
    rope_theta: float = 10000.0
    dropout: float = 0.0
    target_offset: int = 1  # k: the model predicts the item k steps after each input item
    gaussian_targets: tuple = ()  # real targets whose head predicts a mean and a variance (GaussianNLLLoss)
    objective: str = "causal"  # causal: attention to earlier items; masked: to all (bidirectional)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def window_length(self) -> int:
        """The preprocessing seq_length W a window must have (it stores W + 1 items): the model's
        seq_length inputs, then the target `target_offset` items after the last of them."""
        return self.seq_length + self.target_offset - 1

    @classmethod
    def from_dict(cls, data: dict) -> "ModelArgs":
        data = dict(data)
        data["input_columns"] = tuple(tuple(c) for c in data["input_columns"])
        data["target_columns"] = tuple(tuple(c) for c in data["target_columns"])
        data["gaussian_targets"] = tuple(data.get("gaussian_targets", ()))
        return cls(**data)


def make_norm(kind: str, dim: int) -> nn.Module:
    return nn.RMSNorm(dim) if kind == "rmsnorm" else nn.LayerNorm(dim)


class ColumnEncoders(nn.Module):
    """One encoder per input column (an embedding of ids, or a projection of a real value), in
    input-column order, concatenated and projected to dim_model."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.columns = [(name, kind) for name, kind, _, _ in args.input_columns]
        self.encoders = nn.ModuleList(
            nn.Embedding(n_classes, width) if kind == "categorical" else nn.Linear(1, width)
            for _, kind, n_classes, width in args.input_columns
        )
        self.mask_vectors = nn.ParameterList(  # masked: the encoding of a masked (NaN) real value
            nn.Parameter(torch.randn(width) * 0.02)
            for _, kind, _, width in args.input_columns
            if kind == "real" and args.objective == "masked"
        )
        joint = sum(width for *_, width in args.input_columns)
        self.project = nn.Identity() if joint == args.dim_model else nn.Linear(joint, args.dim_model)

    def forward(self, inputs: dict) -> torch.Tensor:
        parts, vectors = [], iter(self.mask_vectors)
        for (name, kind), encoder in zip(self.columns, self.encoders):
            values = inputs[name]
            if kind == "categorical":
                parts.append(encoder(values))
            elif len(self.mask_vectors):
                masked = values.isnan().unsqueeze(-1)
                parts.append(torch.where(masked, next(vectors), encoder(values.nan_to_num().unsqueeze(-1))))
            else:
                parts.append(encoder(values.unsqueeze(-1)))
        return self.project(torch.cat(parts, dim=-1))


class Rotary(nn.Module):
    """Rotary position embedding of queries and keys, [batch, heads, length, head_dim]."""

    def __init__(self, head_dim: int, seq_length: int, theta: float):
        super().__init__()
        frequencies = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(seq_length, dtype=torch.float32), frequencies)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """x at positions start, start + 1, ..."""
        end = start + x.shape[-2]
        cos, sin = self.cos[start:end].to(x.dtype), self.sin[start:end].to(x.dtype)
        even, odd = x[..., 0::2], x[..., 1::2]
        rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
        return rotated.flatten(-2)


class CausalSelfAttention(nn.Module):
    """Multi-head attention with n_kv_heads key/value heads (mha, gqa or mqa). With `last`, only
    the last position queries (it sees every position): what an export needs of the last block."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_head, self.n_kv_heads = args.n_head, args.n_kv_heads
        self.head_dim = args.dim_model // args.n_head
        self.query = nn.Linear(args.dim_model, args.dim_model)
        self.key_value = nn.Linear(args.dim_model, 2 * self.n_kv_heads * self.head_dim)
        self.out = nn.Linear(args.dim_model, args.dim_model)
        self.out.residual = True
        self.dropout, self.causal = args.dropout, args.objective == "causal"
        self.rotary = (
            Rotary(self.head_dim, args.seq_length, args.rope_theta)
            if args.positional_encoding == "rope"
            else None
        )

    def forward(self, x: torch.Tensor, last: bool = False) -> torch.Tensor:
        batch, length, dim = x.shape
        queries = x[:, -1:] if last else x
        q = self.query(queries).view(batch, queries.shape[1], self.n_head, self.head_dim).transpose(1, 2)
        k, v = self.key_value(x).view(batch, length, 2, self.n_kv_heads, self.head_dim).unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        if self.rotary is not None:
            q, k = self.rotary(q, start=length - q.shape[2]), self.rotary(k)
        if self.n_kv_heads != self.n_head:
            repeat = self.n_head // self.n_kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=self.causal and not last)
        return self.out(y.transpose(1, 2).reshape(batch, queries.shape[1], dim))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gated = args.activation_fn == "swiglu"
        width = 2 * args.dim_feedforward if self.gated else args.dim_feedforward
        self.up = nn.Linear(args.dim_model, width)
        self.activation = {"relu": F.relu, "gelu": F.gelu, "swiglu": F.silu}[args.activation_fn]
        self.down = nn.Linear(args.dim_feedforward, args.dim_model)
        self.down.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.up(x)
        if self.gated:
            gate, hidden = hidden.chunk(2, dim=-1)
            return self.down(self.activation(gate) * hidden)
        return self.down(self.activation(hidden))


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.norm_first = args.norm_first
        self.attention_norm = make_norm(args.normalization, args.dim_model)
        self.attention = CausalSelfAttention(args)
        self.feed_forward_norm = make_norm(args.normalization, args.dim_model)
        self.feed_forward = FeedForward(args)
        self.dropout = nn.Dropout(args.dropout)

    def forward(self, x: torch.Tensor, last: bool = False) -> torch.Tensor:
        """[batch, length, dim] -> the same, or with `last` the last position only, [batch, 1, dim]."""
        residual = x[:, -1:] if last else x
        if self.norm_first:
            x = residual + self.dropout(self.attention(self.attention_norm(x), last))
            return x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))
        x = self.attention_norm(residual + self.dropout(self.attention(x, last)))
        return self.feed_forward_norm(x + self.dropout(self.feed_forward(x)))


class Transformer(nn.Module):
    """inputs {column: [batch, length]} -> outputs {target: [batch, length, classes] or [batch, length]}:
    at every position, the prediction of the next item; a target of `gaussian_targets` gives
    [batch, length, 2]: its mean and its variance (softplus, at least VARIANCE_FLOOR)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.encoders = ColumnEncoders(args)
        self.positions = (
            nn.Embedding(args.seq_length, args.dim_model) if args.positional_encoding == "learned" else None
        )
        self.dropout = nn.Dropout(args.dropout)
        self.blocks = nn.ModuleList(Block(args) for _ in range(args.num_layers))
        self.final_norm = make_norm(args.normalization, args.dim_model)
        self.heads = nn.ModuleList(  # in target-column order
            nn.Linear(
                args.dim_model, n_classes if kind == "categorical" else 1 + (name in args.gaussian_targets)
            )
            for name, kind, n_classes in args.target_columns
        )
        self.apply(self._initialize)

    def _initialize(self, module: nn.Module) -> None:
        """GPT-2 initialization: N(0, 0.02), residual projections scaled down by depth."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = 0.02 / math.sqrt(2 * self.args.num_layers) if getattr(module, "residual", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def hidden(self, inputs: dict, last_only: bool = False) -> torch.Tensor:
        """The final-norm hidden states, [batch, length, dim_model]; with `last_only`, those of the
        last position, [batch, 1, dim_model], for less work: the last block skips the others."""
        x = self.encoders(inputs)
        if self.positions is not None:
            x = x + self.positions.weight[: x.shape[1]]
        x = self.dropout(x)
        for i, block in enumerate(self.blocks):
            x = block(x, last=last_only and i == len(self.blocks) - 1)
        return self.final_norm(x)

    def predict(self, hidden: torch.Tensor) -> dict:
        outputs = {}
        for (name, kind, _), head in zip(self.args.target_columns, self.heads):
            out = head(hidden)
            if name in self.args.gaussian_targets:  # [..., 2]: the mean, and a positive variance
                out = torch.stack((out[..., 0], F.softplus(out[..., 1]) + VARIANCE_FLOOR), dim=-1)
            outputs[name] = (
                out if kind == "categorical" or name in self.args.gaussian_targets else out.squeeze(-1)
            )
        return outputs

    def forward(self, inputs: dict) -> dict:
        return self.predict(self.hidden(inputs))


class GenerativeHead(nn.Module):
    """The export form: input tensors in input-column order -> the next item's outputs, one per
    target in target order (class logits [batch, classes] or values [batch]); of a masked model,
    the outputs of every position (the item there: [batch, length, classes] or [batch, length])."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model
        self.names = [name for name, *_ in model.args.input_columns]

    def forward(self, *inputs: torch.Tensor) -> tuple:
        if self.model.args.objective == "masked":  # every position's item: [batch, length, ...]
            return tuple(self.model.predict(self.model.hidden(dict(zip(self.names, inputs)))).values())
        hidden = self.model.hidden(dict(zip(self.names, inputs)), last_only=True)
        return tuple(out[:, 0] for out in self.model.predict(hidden).values())


class EmbeddingHead(nn.Module):
    """The export form: input tensors -> the final-norm hidden state of the last position (of a
    masked model: of every position)."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model
        self.names = [name for name, *_ in model.args.input_columns]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.model.args.objective == "masked":  # every position's: [batch, length, dim_model]
            return self.model.hidden(dict(zip(self.names, inputs)))
        return self.model.hidden(dict(zip(self.names, inputs)), last_only=True)[:, -1]
