"""A small Vision Transformer (Dosovitskiy et al. 2021) written for explanation, not speed.

Two things differ from a library ViT, both so the served model can be explained per request:
- Attention probabilities softmax(QK^T / sqrt(d)) are computed explicitly (no fused
  scaled_dot_product_attention) and pass through a named identity module per block,
  `blocks.<i>.attn.attn_probs`, so `hooks.capture_output` can record them for one thread.
- The patch tokens entering the last block are reshaped to a grid [B, C, h, w] and passed
  through the identity module `patch_grid` (then flattened back): a spatial activation for the
  Grad-CAM family, as pytorch-grad-cam's `reshape_transform` provides. The last block is where
  the patches still reach the CLS token (through its attention); after it the head reads only
  the CLS token, so the gradient on patch tokens there would be zero.

No trained small ViT ships on PyPI (checked: packages that offer ViTs download their weights
from model hubs at run time), so the weights are random, seeded and deterministic.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention. forward(x [B, N, C]) -> [B, N, C].

    `attn_probs` sees the attention probabilities [B, heads, N, N] (rows sum to 1).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_probs = nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        probs = self.attn_probs((q * self.scale @ k.transpose(-2, -1)).softmax(dim=-1))
        return self.proj((probs @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)). [B, N, C] -> same."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patch embedding (conv, stride = patch) + CLS token + learned position embedding,
    `depth` pre-norm blocks, final LayerNorm, linear head on the CLS token.

    forward(x [B, 3, H, W]) -> logits [B, num_classes]; H, W = image_size (the position
    embedding fixes the grid: (H / patch) x (W / patch) patches, plus the CLS token).
    """

    def __init__(self, image_size: int, patch: int, dim: int, heads: int, depth: int, num_classes: int):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
        self.grid = image_size // patch
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.patch_grid = nn.Identity()  # the CAM layer: patch tokens before the last block
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, h*w, C]
        x = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos_embed
        for block in self.blocks[:-1]:
            x = block(x)
        b, n, c = x.shape
        grid = self.patch_grid(x[:, 1:].transpose(1, 2).reshape(b, c, self.grid, self.grid))
        x = torch.cat([x[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
        x = self.blocks[-1](x)
        return self.head(self.norm(x[:, 0]))


def attention_layers(depth: int) -> tuple[str, ...]:
    """Dotted paths of the attention-probability modules, first block first."""
    return tuple(f"blocks.{i}.attn.attn_probs" for i in range(depth))


def build_vit(
    image_size: int, patch: int, dim: int, heads: int, depth: int, num_classes: int, seed: int = 0
) -> VisionTransformer:
    """Same weights on every machine for a given torch version: init under a fixed seed.

    Linear layers keep PyTorch's default init (not timm's std 0.02): with it the random
    model's attention is far from uniform, so the attention maps have structure to show.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(image_size, patch, dim, heads, depth, num_classes)
        nn.init.normal_(model.cls_token, std=0.02)
        nn.init.normal_(model.pos_embed, std=0.02)
    return model.eval()
