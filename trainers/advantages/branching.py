"""Branching estimators: VinePPO's Monte Carlo turn values and SPO-tree's subtree values, over branch episodes.

A batch with branches (`TurnBatch.parent`, `branch_turn`) holds a tree per group: the root
episodes start at the group's first state, and a branch of episode p at turn t starts at
the state p's turn t acted from. A node of the tree is a state: the group's first state, or
the state after some turn. Both estimators give turn t of episode e

    A_{e,t} = r_{e,t} + gamma * V(s_{e,t+1}) - V(s_{e,t}),   V of the state after the last turn = 0,

and differ in what V averages (docs/algorithms.md, "Branching methods").
"""

from __future__ import annotations

import torch
from typing import Literal

from torch import Tensor

from . import reference
from .batch import TurnBatch
from .ops import Ops
from .registry import register_estimator
from .segment import Segments

Scale = Literal["none", "batch_rms"]
Credit = Literal["segment", "turn"]


class _Tree:
    """The batch's tree in tensors: per row its node and return-to-go, per episode where it starts."""

    def __init__(self, batch: TurnBatch, ops: Ops, gamma: float):
        if batch.parent is None:
            raise ValueError("this estimator reads branch episodes (TurnBatch.parent and branch_turn), which the "
                             "batch does not have; collect with rollout.branch set")
        seg = self.seg = Segments.of(batch)
        n, device = batch.num_turns, batch.device
        self.reward = batch.reward.to(torch.float64)
        self.to_go = ops.reverse_scan(self.reward, seg, gamma, "sum")  # G_{e,t}
        start = seg.episode_start
        ids = batch.episode[start]
        order = torch.argsort(ids)
        parent_id = batch.parent[start]
        self.is_branch = parent_id >= 0
        found = order[torch.searchsorted(ids[order], parent_id.clamp(min=0)).clamp(max=len(ids) - 1)]
        self.parent = torch.where(self.is_branch, found, -1)  # dense episode index
        branch_turn = batch.branch_turn[start].clamp(min=0)
        # Node ids: row i is the node s_{e,t} for t > 0; the group roots are n + g. An episode starts at its
        # group's root, or at its parent's row at the branch turn, or (branch turn 0) where its parent starts.
        root = n + seg.group_of_turn[start]
        starts_at = torch.where(self.is_branch, start[self.parent.clamp(min=0)] + branch_turn, root)
        at_parent_start = self.is_branch & (branch_turn == 0)
        self.offset = torch.zeros_like(start)  # depth of an episode's first state in its tree
        for _ in range(seg.num_episodes):  # parents precede branches: settles within the tree's depth
            resolved = torch.where(at_parent_start, starts_at[self.parent.clamp(min=0)], starts_at)
            offset = torch.where(self.is_branch, self.offset[self.parent.clamp(min=0)] + branch_turn, 0)
            if torch.equal(resolved, starts_at) and torch.equal(offset, self.offset):
                break
            starts_at, self.offset = resolved, offset
        self.starts_at = starts_at
        self.num_nodes = n + seg.num_groups
        self.node = torch.arange(n, device=device).index_copy_(0, start, starts_at)
        self.depth = self.offset[seg.episode_of_turn] + batch.turn
        starts_here = torch.zeros(self.num_nodes, dtype=torch.float64, device=device)
        starts_here.index_add_(0, starts_at, torch.ones_like(self.to_go[start]))
        # episodes other than e that start at row i's state (e itself left out where it starts)
        self.others = starts_here[self.node] - seg.is_first.to(torch.float64)

    def next_value(self, value: Tensor) -> Tensor:
        """[N] V(s_{e,t+1}) from per-row values V(s_{e,t}): the next row's, 0 after an episode's last turn."""
        shifted = torch.cat([value[1:], value.new_zeros(1)])
        return torch.where(self.seg.is_last, 0.0, shifted)

    def segment_advantages(self, value: Tensor, valued: Tensor, gamma: float) -> Tensor:
        """[N] Each turn gets the advantage of its segment: the turns of an episode from a branch point p (its
        first turn, or a turn another episode starts from) up to the next one q (or the end) share

            A_seg = sum_{p <= j < q} gamma^(j-p) r_j + gamma^(q-p) V(s_q) - V(s_p) = D_p - gamma^(q-p) D_q,

        D = G - V (D after the last turn = 0), with `value` V(s_{e,t}) per row; a segment whose start is not
        `valued` gets 0."""
        seg, n = self.seg, self.to_go.shape[0]
        index = torch.arange(n, device=value.device)
        branch_point = seg.is_first | (self.others > 0)
        last_point = torch.cummax(torch.where(branch_point, index, -1), dim=0).values  # never before e's first row
        later = torch.where(branch_point, index, n).flip(0).cummin(dim=0).values.flip(0)  # first point >= row
        end = seg.episode_bounds[1:][seg.episode_of_turn]  # one past e's last row
        next_point = torch.cat([later[1:], later.new_full((1,), n)]).clamp(max=end)  # first point > row, or end
        residual = torch.cat([self.to_go - value, value.new_zeros(1)])  # D, and 0 at index n ("after the end")
        following = torch.where(next_point < end, next_point, n)
        span = (next_point - index).to(torch.float64)
        segment = torch.where(valued, residual[:n] - gamma ** span * residual[following], 0.0)
        return segment[last_point]


@register_estimator("vineppo", reference=reference.vineppo, branches=True)
def vineppo(batch: TurnBatch, ops: Ops, *, gamma: float = 1.0, train_branches: bool = False,
            scale: Scale = "none", credit: Credit = "segment", eps: float = 1e-6) -> Tensor:
    """VinePPO at turn level: V(s) is the mean discounted return of the continuations that start at s.

    The continuations of s_{e,t} (t > 0) are the branches of e at turn t; those of a group's first
    state are its other root episodes and their turn-0 branches (leave-one-out). `credit="segment"`:
    the turns from one valued state to the next valued one (or the end) share
    sum r + gamma^k V(next valued state) - V(valued state), as VinePPO's steps share theirs; turns
    before an episode's first valued state get 0. `credit="turn"` (envgym before 2026-12-07): only a
    turn from a valued state gets an advantage, its next state valued by V where it has
    continuations, else by e's own return-to-go G_{e,t+1}; every other turn gets 0. With
    `train_branches=False` (the paper: its rollouts only estimate values) branch rows get advantage 0.
    `scale="batch_rms"` divides by the root mean square of the trained rows' nonzero advantages,
    putting them on the scale of group-normalised estimators (an entropy bonus tuned for those then
    weighs the same); the zeros of turns without a baseline are left out. (Their std would be 0 when
    the nonzero advantages are equal, and dividing by it blew them up to ~1e4.)
    """
    tree = _Tree(batch, ops, gamma)
    first, start = tree.seg.is_first, tree.seg.episode_start
    total = torch.zeros(tree.num_nodes, dtype=torch.float64, device=batch.device)
    total.index_add_(0, tree.starts_at, tree.to_go[start])
    others_total = total[tree.node] - torch.where(first, tree.to_go, 0.0)  # leave e itself out where it starts
    others = tree.others
    value = torch.where(others > 0, others_total / others.clamp(min=1), tree.to_go)
    if credit == "segment":
        advantage = tree.segment_advantages(value, others > 0, gamma)
    else:
        advantage = torch.where(others > 0, tree.reward + gamma * tree.next_value(value) - value, 0.0)
    return _finish(advantage, tree, train_branches, scale, eps)


@register_estimator("spo_tree", reference=reference.spo_tree, branches=True)
def spo_tree(batch: TurnBatch, ops: Ops, *, gamma: float = 1.0, train_branches: bool = True,
             scale: Scale = "none", credit: Credit = "segment", eps: float = 1e-6) -> Tensor:
    """SPO-tree at turn level: V(n) is the mean discounted return-to-go, from n, of every episode whose
    path passes through node n (e itself included); A = r + gamma * V(child) - V(parent node).

    Along a stretch of turns no other path leaves, that advantage is 0 but on the stretch's first turn;
    `credit="segment"` gives every turn of the stretch its value (SPO: a segment's advantage is every
    token's), `credit="turn"` (envgym before 2026-12-07) only the first. `train_branches=True` (SPO:
    every sample of the tree trains) gives branch rows their advantages too. `scale` as vineppo's.
    """
    tree = _Tree(batch, ops, gamma)
    count = torch.zeros(tree.num_nodes, dtype=torch.float64, device=batch.device)
    total = torch.zeros_like(count)
    last = tree.seg.is_last
    child = torch.cat([tree.node[1:], tree.node.new_zeros(1)])
    levels = torch.argsort(tree.depth, descending=True, stable=True)
    depths = tree.depth[levels]
    bounds = torch.nonzero(torch.diff(depths)).flatten() + 1
    for rows in torch.tensor_split(levels, bounds.cpu()):  # deepest edges first: a child's sums are complete
        is_last = last[rows]
        child_count = torch.where(is_last, 1.0, count[child[rows]])
        child_total = torch.where(is_last, 0.0, total[child[rows]])
        count.index_add_(0, tree.node[rows], child_count)
        total.index_add_(0, tree.node[rows], tree.reward[rows] * child_count + gamma * child_total)
    value = total[tree.node] / count[tree.node]
    if credit == "segment":
        advantage = tree.segment_advantages(value, torch.ones_like(tree.seg.is_first), gamma)
    else:
        advantage = tree.reward + gamma * tree.next_value(value) - value
    return _finish(advantage, tree, train_branches, scale, eps)


def _finish(advantage: Tensor, tree: _Tree, train_branches: bool, scale: Scale, eps: float) -> Tensor:
    """Branch rows zeroed unless `train_branches`; then `scale` over the trained rows."""
    trained = torch.ones_like(advantage, dtype=torch.bool)
    if not train_branches:
        trained = ~tree.is_branch[tree.seg.episode_of_turn]
        advantage = torch.where(trained, advantage, 0.0)
    informative = trained & (advantage.abs() > 1e-12)  # the zeros of turns without a baseline would shrink it
    if scale == "batch_rms" and bool(informative.any()):
        advantage = advantage / (advantage[informative].square().mean().sqrt() + eps)
    return advantage
