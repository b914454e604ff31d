from dataclasses import asdict, fields, replace

import torch

from oneepoch.config import ModelConfig
from oneepoch.flops import Shape, forward_flops_per_token, param_counts, train_flops_per_token
from oneepoch.model import GPT


def test_flops_per_token_matches_hand_calculation():
    # n_layer 2, d_model 64, seq_len 32, vocab 100, worked out by hand:
    # per layer: qkv 2*64*192 = 24576; scores 2*32*64 = 4096; values 4096;
    # out proj 2*64*64 = 8192; mlp 2*(2*64*256) = 65536 -> 106496 per layer.
    # head: 2*64*100 = 12800. Forward = 2*106496 + 12800 = 225792; training x3 = 677376.
    s = Shape(n_layer=2, n_head=4, d_model=64, seq_len=32, vocab_size=100)
    assert forward_flops_per_token(s) == 225792
    assert train_flops_per_token(s) == 677376


def test_param_counts_match_the_model():
    cfg = ModelConfig(n_layer=3, n_head=4, d_model=48, seq_len=40, vocab_size=333)
    model = GPT(cfg)
    counts = param_counts(cfg.shape())
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    embedding = model.wte.weight.numel() + model.wpe.weight.numel()
    assert counts["non_embedding"] == counts["total"] - embedding
    # Kaplan's approximation 12 * L * d^2 is close for the non-embedding part.
    assert abs(counts["non_embedding"] / (12 * 3 * 48**2) - 1) < 0.05


def test_model_config_is_a_shape_and_dropout():
    """The config's model section and flops.Shape share their fields: one cannot gain a
    field the other lacks, and each converts to the other unchanged."""
    cfg = ModelConfig(n_layer=3, n_head=4, d_model=48, seq_len=40, vocab_size=333, dropout=0.1)
    assert cfg.shape() == Shape(3, 4, 48, 40, 333)
    assert ModelConfig(**asdict(cfg.shape())) == replace(cfg, dropout=0.0)
    assert [f.name for f in fields(ModelConfig)] == [f.name for f in fields(Shape)] + ["dropout"]


def test_head_is_tied_and_loss_starts_near_uniform():
    cfg = ModelConfig(n_layer=1, n_head=2, d_model=32, seq_len=16, vocab_size=50)
    model = GPT(cfg)
    assert (
        model.wte.weight.data_ptr()
        == next(p for n, p in model.named_parameters() if n == "wte.weight").data_ptr()
    )
    x = torch.randint(0, 50, (4, 17))
    loss = model(x[:, :-1], x[:, 1:])
    assert abs(loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.2
    decay, no_decay = model.param_groups(0.1)
    assert all(p.dim() == 2 for p in decay["params"])
    assert any(p is model.wte.weight for p in no_decay["params"])
