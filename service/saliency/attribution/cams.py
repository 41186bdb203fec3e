"""Class activation maps from captured activations and their gradients (pure functions).

Every function takes activations A and gradients G of shape [B, K, h, w] and returns a
feature-resolution map [B, h, w]. Variants differ only in how channel weights are made.
"""

from __future__ import annotations

import torch


def grad_cam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Selvaraju et al.: ReLU(sum_k mean_ij(G_k) * A_k)."""
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * acts).sum(dim=1))


def grad_cam_pp(acts: torch.Tensor, grads: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Chattopadhyay et al. (closed form for an exponential score, as pytorch-grad-cam):
    alpha = G^2 / (2 G^2 + sum_ij(A) G^3);  w_k = sum_ij alpha * ReLU(G)."""
    g2 = grads.pow(2)
    g3 = g2 * grads
    act_sum = acts.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + act_sum * g3 + eps)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    weights = (alpha * torch.relu(grads)).sum(dim=(2, 3), keepdim=True)
    return torch.relu((weights * acts).sum(dim=1))


def eigen_cam(acts: torch.Tensor) -> torch.Tensor:
    """Muhammad & Yeasin: projection of the centred activations on their first principal
    component. Class-agnostic. SVD's sign is arbitrary, so we orient the component to
    correlate positively with the channel-summed activation (pytorch-grad-cam leaves it to
    chance), then ReLU."""
    b, k, h, w = acts.shape
    flat = acts.reshape(b, k, h * w).transpose(1, 2).double()  # [B, hw, K]
    centred = flat - flat.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = centred @ vh[:, 0, :, None]  # [B, hw, 1]
    projection = projection[..., 0]
    reference = flat.sum(dim=2)
    sign = torch.sign(((projection - projection.mean(1, keepdim=True)) * reference).sum(1))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return torch.relu(projection * sign[:, None]).reshape(b, h, w).to(acts.dtype)
