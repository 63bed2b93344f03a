"""Beyond the paper: where each region is, and each region as its own prefix token.

The paper's region features carry no position and are mean-pooled into one vector (eq. 10),
which loses which attribute belongs to which object and every relation ("left of", "above").
Three optional pieces put that back:

- :func:`box_geometry`: each region's normalised box (centre x, centre y, width, height, area),
  which :class:`BoxEmbedding` embeds and :class:`Captioner` adds to the node feature before the GAT;
- :func:`edge_geometry`: relative box geometry of each GAT edge (dx, dy, log width and height
  ratios), as edge attributes beside the Gaussian weight;
- :class:`RegionTokens`: each (GAT-enhanced) region mapped to one GPT-2 prefix token, in a
  deterministic order (detector score, or position left to right), capped at a number of slots;
  empty slots hold a learned "no region" embedding, so every prefix has the same length and
  needs no attention mask;
- :class:`SpatialContext`: each region token also sums the other region tokens of its image by
  direction (soft learned gates of their relative box), so a token carries what lies
  to its left, right, above and below, and naming a relation needs one look at one token
  (or, with ``model.spatial_tokens``, sits in a second token per region, so that the region's own
  token keeps only what it is).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from features.config import choices
from train.config import ModelConfig

GEOMETRY = 5  # cx, cy, w, h, area — all as fractions of the image
EDGE_GEOMETRY = 4  # dx, dy, log width ratio, log height ratio (edge_geometry's columns)
FREQUENCIES = (1, 2, 4, 8, 16)  # of the box embedding's sinusoids, in cycles per image
ORDERS = choices(ModelConfig, "region_order")


def box_geometry(boxes: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
    """boxes (V, 4) in pixels (x0, y0, x1, y1), image_size (V, 2) as (height, width) of each
    region's image → (V, 5): centre x, centre y, width, height, area, each relative to the image."""
    height, width = image_size[:, 0].float(), image_size[:, 1].float()
    w, h = (boxes[:, 2] - boxes[:, 0]) / width, (boxes[:, 3] - boxes[:, 1]) / height
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2 / width, (boxes[:, 1] + boxes[:, 3]) / 2 / height
    return torch.stack([cx, cy, w, h, w * h], dim=-1)


def edge_geometry(geometry: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """Per edge (source j → target i): (cx_j - cx_i, cy_j - cy_i, log w_j/w_i, log h_j/h_i): (E, EDGE_GEOMETRY)."""
    return relative_box(geometry[edge_index[0]], geometry[edge_index[1]])


def relative_box(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Box geometry (E, GEOMETRY) of src as seen from dst: (E, EDGE_GEOMETRY), as :func:`edge_geometry`."""
    size_ratio = torch.log(src[:, 2:4].clamp_min(1e-4) / dst[:, 2:4].clamp_min(1e-4))
    return torch.cat([src[:, :2] - dst[:, :2], size_ratio], dim=-1)


def region_slots(node_batch: torch.Tensor, geometry: torch.Tensor, n_images: int, slots: int,
                 order: str) -> torch.Tensor:
    """Which node fills each prefix slot: (B, slots) node indices, -1 for an empty slot.
    ``score``: the store's order (the detector's, best first); ``position``: left to right by
    box centre, then top to bottom; ``top_down``: top to bottom, then left to right. Images keep
    their first ``slots`` regions in that order."""
    n = len(node_batch)
    within = _order_key(geometry, order)
    within_rank = torch.empty(n, dtype=torch.long, device=node_batch.device)
    sorted_nodes = torch.argsort(within, stable=True)
    sorted_nodes = sorted_nodes[torch.argsort(node_batch[sorted_nodes], stable=True)]  # grouped by image
    first = torch.searchsorted(node_batch[sorted_nodes], torch.arange(n_images, device=node_batch.device))
    within_rank[sorted_nodes] = torch.arange(n, device=node_batch.device) - first[node_batch[sorted_nodes]]
    table = torch.full((n_images, slots), -1, dtype=torch.long, device=node_batch.device)
    keep = within_rank < slots
    table[node_batch[keep], within_rank[keep]] = torch.arange(n, device=node_batch.device)[keep]
    return table


def reorder_slots(table: torch.Tensor, geometry: torch.Tensor, order: str) -> torch.Tensor:
    """The same regions as ``table`` (B, slots) — the ones its order kept — in another order,
    empty slots last."""
    key = _order_key(geometry, order)[table.clamp_min(0)]  # (B, slots)
    key = torch.where(table >= 0, key, torch.full_like(key, float("inf")))
    return table.gather(1, torch.argsort(key, dim=1, stable=True))


def _order_key(geometry: torch.Tensor, order: str) -> torch.Tensor:
    """A sort key per node (V,) for ``order``: regions sort by it within their image."""
    if order not in ORDERS:
        raise ValueError(f"model.region_order: unknown {order!r}; known: {ORDERS}")
    if order == "position":
        return geometry[:, 0] * 1e3 + geometry[:, 1]  # x first; y breaks ties
    if order == "top_down":
        return geometry[:, 1] * 1e3 + geometry[:, 0]  # y first; x breaks ties
    return torch.arange(len(geometry), device=geometry.device, dtype=torch.float)  # store order


class BoxEmbedding(nn.Module):
    """Box geometry (V, 5) → (V, D): sines and cosines of each value at several frequencies, then
    a linear map. A linear map of the raw fractions barely moves region features of far larger
    magnitude (a small and a large object differ by ~0.1 in width); the sinusoids, like DETR's
    positional encodings, turn such differences into unit-scale ones."""

    def __init__(self, dim: int):
        super().__init__()
        self.project = nn.Linear(GEOMETRY * 2 * len(FREQUENCIES), dim)

    def forward(self, geometry: torch.Tensor) -> torch.Tensor:
        return self.project(box_sinusoids(geometry))  # (V, D)


def box_sinusoids(geometry: torch.Tensor) -> torch.Tensor:
    """(V, 5) → (V, 5·2·F): sin and cos of 2π·f·value for each frequency f in FREQUENCIES."""
    angles = geometry[..., None] * (torch.tensor(FREQUENCIES, dtype=geometry.dtype, device=geometry.device)
                                    * 2 * math.pi)  # (V, 5, F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)


class RegionTokens(nn.Module):
    """Regions (V, D) → prefix tokens (B, slots, h): a two-layer projection per region (:attr:`project`),
    placed in slots."""

    def __init__(self, region_dim: int, h: int, slots: int, order: str):
        super().__init__()
        self.slots, self.order = slots, order
        self.project = nn.Sequential(nn.Linear(region_dim, h), nn.Tanh(), nn.Linear(h, h))
        self.empty = nn.Parameter(torch.zeros(h))  # "no region here"

    def table(self, node_batch: torch.Tensor, geometry: torch.Tensor, n_images: int) -> torch.Tensor:
        """Which node fills each slot (B, slots), -1 for an empty one (:func:`region_slots`)."""
        return region_slots(node_batch, geometry, n_images, self.slots, self.order)

    def forward(self, node_tokens: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """``node_tokens``: every region already projected (:attr:`project`), (V, h); ``table``
        from :meth:`table`. Returns the tokens (B, slots, h)."""
        tokens = node_tokens[table.clamp_min(0)]  # (B, slots, h)
        return torch.where((table >= 0)[..., None], tokens, self.empty.expand_as(tokens))


SPATIAL_MODES = choices(ModelConfig, "spatial_context")


class SpatialContext(nn.Module):
    """Each region token gathers the other regions of its image by direction, after GCN-LSTM's
    spatial graph (Yao et al. 2018): for every ordered pair (i, j) of an image, j's token is
    weighed into one sum per direction by j's box relative to i's, and the sums are added to i's
    token. A token then says "red star; to my left: a yellow circle", so naming a relation needs
    one look at the token of the object just described. The directions are

    - ``bins``: GCN-LSTM's fixed classes — boxes overlapping by IoU ≥ OVERLAP_IOU (in this
      pipeline mostly a second detection of the same object) in a class of their own, the others
      by the angle of j's centre seen from i's, in ``directions`` equal sectors starting at 0°
      (8: 45° each);
    - ``gates``: ``directions`` learned sigmoid gates of the relative box (:func:`edge_geometry`)."""

    OVERLAP_IOU = 0.5

    def __init__(self, h: int, directions: int, mode: str = "gates"):
        super().__init__()
        if mode not in SPATIAL_MODES:
            raise ValueError(f"model.spatial_context: unknown {mode!r}; known: {SPATIAL_MODES}")
        self.directions, self.mode = directions, mode
        self.classes = directions + (mode == "bins")  # bins: + the overlap class
        self.gates = (nn.Sequential(nn.Linear(EDGE_GEOMETRY, h), nn.GELU(), nn.Linear(h, directions))
                      if mode == "gates" else None)
        self.message = nn.Linear(h, h * self.classes)
        self.out = nn.Linear(h * self.classes, h)

    def forward(self, tokens: torch.Tensor, node_batch: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        """tokens (V, h) → each token's spatial context (V, h), to add to it or to give a token of its own."""
        same_image = node_batch[:, None] == node_batch[None, :]
        same_image.fill_diagonal_(False)
        i, j = same_image.nonzero().T  # (P,) every ordered pair of regions of one image
        weights = self.class_weights(geometry[i], geometry[j])  # (P, R): j seen from i
        # explicit sizes: P is 0 when no image of the batch has two regions (a single photo often has one)
        messages = self.message(tokens[j]).view(len(j), self.classes, tokens.shape[-1]) * weights[..., None]  # (P, R, h)
        context = torch.zeros(len(tokens), *messages.shape[1:], dtype=messages.dtype, device=tokens.device)  # autocast: may differ from tokens
        context.index_add_(0, i, messages)  # (V, R, h)
        return self.out(context.flatten(1))

    def class_weights(self, seen_from: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """Box geometry (P, GEOMETRY) of each pair's two regions → the pair's weight per class (P, R)."""
        relative = relative_box(seen, seen_from)  # (P, EDGE_GEOMETRY)
        if self.gates is not None:
            return torch.sigmoid(self.gates(relative))
        angle = torch.atan2(-relative[:, 1], relative[:, 0])  # counter-clockwise from +x; image y points down
        sector = torch.floor(angle / (2 * math.pi / self.directions)).long() % self.directions
        sector = torch.where(pair_iou(seen_from, seen) >= self.OVERLAP_IOU, self.directions, sector)
        return nn.functional.one_hot(sector, self.classes).to(relative.dtype)


def pair_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of box a[k] with box b[k], both as geometry (cx, cy, w, h, ...): (P,)."""
    low = torch.maximum(a[:, :2] - a[:, 2:4] / 2, b[:, :2] - b[:, 2:4] / 2)
    high = torch.minimum(a[:, :2] + a[:, 2:4] / 2, b[:, :2] + b[:, 2:4] / 2)
    inter = (high - low).clamp_min(0).prod(dim=1)
    return inter / (a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter).clamp_min(1e-9)
