"""A decoder-only Transformer (GPT): the whole model on one screen.

Token + learned position embeddings, pre-LayerNorm blocks with causal self-attention
(scaled_dot_product_attention) and a 4x GELU MLP, a final LayerNorm, and an output head
tied to the token embedding. Dropout defaults to 0: with one-epoch training there is no
overfitting to regularise against.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from oneepoch.config import ModelConfig
from oneepoch.errors import UserError
from oneepoch.head_loss import head_cross_entropy


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        # (b, t, d) -> (b, heads, t, head_dim)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = causal_attention(q, k, v, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(b, t, d)
        return self.resid_drop(self.proj(y))


def causal_attention(q, k, v, dropout_p: float) -> torch.Tensor:
    """On CPUs in float32 even under bf16 autocast: there the float32 flash kernel is faster
    than the bf16 one (5-10% of a whole step at d_model 128-256, A/B of the step on 2 cores)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):
            q, k, v = q.float(), k.float(), v.float()
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(self._init_weights)
        # GPT-2: scale residual-branch outputs so the residual stream's variance does not grow
        # with depth.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits for every position; with targets, the mean cross-entropy instead."""
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        if targets is None:
            return F.linear(x, self.wte.weight)  # head tied to the token embedding
        return head_cross_entropy(x, self.wte.weight, targets)  # the same, without the logits

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay matrices, but not biases, norms or embeddings."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            is_matrix = p.dim() >= 2 and not name.startswith(("wte", "wpe"))
            (decay if is_matrix else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
    ) -> torch.Tensor:
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.cfg.seq_len :])[:, -1, :]
            if temperature <= 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx


SHAPE_FIELDS = ("n_layer", "n_head", "d_model", "seq_len", "vocab_size")


def check_state(model_state: dict, m: ModelConfig, ckpt, train_state: dict | None = None) -> None:
    """Refuse a checkpoint whose model is not the one config ``m`` describes (config.toml
    edited after training): its tensors' names and shapes differ from GPT(m)'s, or, where
    the checkpoint's ``train_state`` recorded the run's config, a shape setting differs that
    the tensors cannot show (n_head)."""
    config = (train_state or {}).get("config")
    recorded = config.get("model") if isinstance(config, dict) else None
    recorded = recorded if isinstance(recorded, dict) else {}
    changed = [
        f"{k} {getattr(m, k)} in config.toml, {recorded[k]} in the checkpoint"
        for k in SHAPE_FIELDS
        if k in recorded and recorded[k] != getattr(m, k)
    ]
    if not changed:
        with torch.device("meta"):
            want = {k: tuple(v.shape) for k, v in GPT(m).state_dict().items()}
        got = {k: tuple(v.shape) for k, v in model_state.items()}
        diff = sorted(set(got) ^ set(want)) or sorted(k for k in got if got[k] != want[k])
        changed = [f"first difference: {diff[0]}"] if diff else []
    if changed:
        raise UserError(
            f"checkpoint {ckpt} does not match the model its run's config.toml describes "
            f"({'; '.join(changed)}): config.toml was changed after training; put back the "
            "[model] settings the run was trained with."
        )
