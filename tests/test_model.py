"""The network: causal, every architecture option builds and trains, exports rebuild it exactly."""

import pytest
import torch

from sequifier.model.network import EmbeddingHead, GenerativeHead, ModelArgs, Transformer

COLUMNS = (("item", "categorical", 9, 12), ("price", "real", 0, 4))
TARGETS = (("item", "categorical", 9), ("price", "real", 0))


def make_args(**values) -> ModelArgs:
    settings = {"dim_model": 16, "n_head": 4, "n_kv_heads": 4, "dim_feedforward": 24, **values}
    return ModelArgs(COLUMNS, TARGETS, seq_length=8, **settings)


def inputs(batch=3, length=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "item": torch.randint(3, 9, (batch, length), generator=generator, dtype=torch.int32),
        "price": torch.randn(batch, length, generator=generator),
    }


VARIANTS = [
    {},
    {"n_kv_heads": 2},
    {"n_kv_heads": 1},
    {"activation_fn": "swiglu", "normalization": "rmsnorm"},
    {"activation_fn": "relu", "norm_first": False},
    {"positional_encoding": "rope"},
]


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "default"
)
def test_outputs_are_causal_and_shaped(variant):
    torch.manual_seed(0)
    model = Transformer(make_args(**variant)).eval()
    x = inputs()
    out = model(x)
    assert out["item"].shape == (3, 8, 9) and out["price"].shape == (3, 8)
    changed = {k: v.clone() for k, v in x.items()}
    changed["item"][:, 5:] = 3
    changed["price"][:, 5:] += 10.0
    again = model(changed)
    for name in ("item", "price"):
        torch.testing.assert_close(out[name][:, :5], again[name][:, :5])  # positions <= 4 never see 5..7
        assert not torch.allclose(out[name][:, 5:], again[name][:, 5:])


def test_grouped_heads_have_fewer_key_value_weights():
    sizes = {
        kv: Transformer(make_args(n_kv_heads=kv)).blocks[0].attention.key_value.weight.shape
        for kv in (4, 2, 1)
    }
    assert sizes == {4: (32, 16), 2: (16, 16), 1: (8, 16)}


def test_learns_a_deterministic_successor():
    """Next item = current item + 1 (mod 6): a small model gets the loss near zero."""
    torch.manual_seed(0)
    args = ModelArgs(
        (("item", "categorical", 9, 16),),
        (("item", "categorical", 9),),
        seq_length=8,
        dim_model=16,
        n_head=2,
        n_kv_heads=2,
        dim_feedforward=32,
        num_layers=1,
    )
    model = Transformer(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        start = torch.randint(0, 6, (32, 1))
        window = 3 + (start + torch.arange(9)) % 6
        logits = model({"item": window[:, :-1]})["item"]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


def test_export_heads_give_the_last_position():
    torch.manual_seed(0)
    model = Transformer(make_args(positional_encoding="rope")).eval()
    x = inputs()
    full = model(x)
    logits, price = GenerativeHead(model)(x["item"], x["price"])
    torch.testing.assert_close(logits, full["item"][:, -1])
    torch.testing.assert_close(price, full["price"][:, -1])
    embedding = EmbeddingHead(model)(x["item"], x["price"])
    assert embedding.shape == (3, 16)
    torch.testing.assert_close(embedding, model.hidden(x)[:, -1])


def test_model_args_round_trip_through_a_dict():
    args = make_args(activation_fn="swiglu")
    assert ModelArgs.from_dict(args.to_dict()) == args


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("positional_encoding, attention", [("learned", "mha"), ("rope", "gqa")])
def test_the_last_position_alone_equals_the_full_forward(norm_first, positional_encoding, attention):
    """The export heads compute the last block for the last position only: same numbers."""
    args = ModelArgs(
        input_columns=(("item", "categorical", 9, 12), ("price", "real", 0, 4)),
        target_columns=(("item", "categorical", 9), ("price", "real", 0)),
        seq_length=7, dim_model=16, n_head=4, n_kv_heads=2 if attention == "gqa" else 4, dim_feedforward=24,
        num_layers=3, norm_first=norm_first, positional_encoding=positional_encoding,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Transformer(args).eval()
    inputs = (torch.randint(0, 9, (5, 7), dtype=torch.int32), torch.randn(5, 7))
    full = model({"item": inputs[0], "price": inputs[1]})
    item, price = GenerativeHead(model)(*inputs)
    torch.testing.assert_close(item, full["item"][:, -1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(price, full["price"][:, -1], rtol=1e-5, atol=1e-5)
    hidden = model.hidden({"item": inputs[0], "price": inputs[1]})[:, -1]
    torch.testing.assert_close(EmbeddingHead(model)(*inputs), hidden, rtol=1e-5, atol=1e-5)
