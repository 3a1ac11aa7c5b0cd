"""Plain-loop reference implementations: the test oracle and the benchmarks' single-pass baseline.

Not for training. Each estimator walks Python lists and dicts, reading the equation in
its docstring literally, in double precision, and shares no code with the vectorised
(`backend="torch"`) or Triton paths, which must match it to 1e-5. Options and defaults
are the registered estimators' (see their docstrings for what each option means).
"""

from __future__ import annotations

import difflib
import math
from collections import defaultdict
from collections.abc import Hashable, Sequence

import torch
from torch import Tensor


def _columns(batch) -> dict[str, list]:
    names = ("group", "episode", "turn", "reward", "state", "intrinsic", "invalid")
    return {n: getattr(batch, n).tolist() for n in names if getattr(batch, n) is not None}


def _episodes(turn: list[int]) -> list[list[int]]:
    """Rows of each episode, in order (a new episode starts at every turn 0)."""
    episodes: list[list[int]] = []
    for row, t in enumerate(turn):
        if t == 0:
            episodes.append([])
        episodes[-1].append(row)
    return episodes


def _normalize(values: list[float], weights: list[float], *, scale: bool, std: str, eps: float,
               singleton: str) -> list[float]:
    """(v - mean) / (std + eps) (or v - mean) over one segment, rows weighted; total weight <= 1 is a singleton."""
    total = sum(weights)
    if total <= 1:
        if singleton == "zero":
            return [0.0] * len(values)
        return [v / (1.0 + eps) if scale else v for v in values]
    mean = sum(w * v for w, v in zip(weights, values)) / total
    if not scale:
        return [v - mean for v in values]
    squares = sum(w * (v - mean) ** 2 for w, v in zip(weights, values))
    spread = math.sqrt(squares / (total - 1 if std == "sample" else total))
    return [(v - mean) / (spread + eps) for v in values]


def _normalize_by(keys: Sequence[Hashable], values: list[float], weights: list[float] | None = None,
                  **how) -> list[float]:
    """_normalize within each set of rows sharing a key."""
    weights = [1.0] * len(values) if weights is None else weights
    rows_of: dict[Hashable, list[int]] = defaultdict(list)
    for row, key in enumerate(keys):
        rows_of[key].append(row)
    out = [0.0] * len(values)
    for rows in rows_of.values():
        for row, v in zip(rows, _normalize([values[r] for r in rows], [weights[r] for r in rows], **how)):
            out[row] = v
    return out


def _discount(values: list[float], episodes: list[list[int]], gamma: float) -> list[float]:
    """G_t = values_t + gamma * G_{t+1}, run backwards over each episode."""
    out = [0.0] * len(values)
    for rows in episodes:
        running = 0.0
        for row in reversed(rows):
            running = values[row] + gamma * running
            out[row] = running
    return out


def _episode_returns(cols: dict[str, list], episodes: list[list[int]]) -> list[float]:
    return [sum(cols["reward"][r] for r in rows) for rows in episodes]


def _per_turn(per_episode: list[float], episodes: list[list[int]]) -> list[float]:
    out = [0.0] * sum(len(rows) for rows in episodes)
    for value, rows in zip(per_episode, episodes):
        for r in rows:
            out[r] = value
    return out


def _token_counts(batch) -> list[float]:
    if batch.token_turn is None:
        raise ValueError("statistics over tokens need batch.token_turn and batch.loss_mask, which are None")
    counts = [0.0] * batch.num_turns
    for turn_row, on in zip(batch.token_turn.tolist(), batch.loss_mask.tolist()):
        if on:
            counts[turn_row] += 1.0
    return counts


def _out(values: list[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


def discounted_returns(values: Tensor, episode: Tensor, gamma: float) -> Tensor:
    """G_t = sum_{k >= t} gamma^(k-t) r_k within each run of equal episode ids."""
    ids, vals = episode.tolist(), values.tolist()
    out = [0.0] * len(vals)
    for row in reversed(range(len(vals))):
        continues = row + 1 < len(vals) and ids[row + 1] == ids[row]
        out[row] = vals[row] + gamma * out[row + 1] if continues else vals[row]
    return _out(out)


def min_returns(values: Tensor, episode: Tensor) -> Tensor:
    """V_t = min_{k >= t} r_k within each run of equal episode ids."""
    ids, vals = episode.tolist(), values.tolist()
    out = [0.0] * len(vals)
    for row in reversed(range(len(vals))):
        continues = row + 1 < len(vals) and ids[row + 1] == ids[row]
        out[row] = min(vals[row], out[row + 1]) if continues else vals[row]
    return _out(out)


def broadcast_to_tokens(advantages: Tensor, batch) -> Tensor:
    """advantages[token_turn[m]] where loss_mask[m], else 0."""
    adv = advantages.tolist()
    values = [adv[t] if on else 0.0 for t, on in zip(batch.token_turn.tolist(), batch.loss_mask.tolist())]
    return torch.tensor(values, dtype=torch.float32)


def grpo(batch, *, scale="std", episode_stats="episodes", std="population", eps=1e-6, singleton="zero") -> Tensor:
    """A_i = (R_i - mean_g R) / (std_g R + eps), broadcast to the episode's turns."""
    cols = _columns(batch)
    episodes = _episodes(cols["turn"])
    weights = [1.0 if episode_stats == "episodes" else float(len(rows)) for rows in episodes]
    adv = _normalize_by([cols["group"][rows[0]] for rows in episodes], _episode_returns(cols, episodes), weights,
                        scale=scale == "std", std=std, eps=eps, singleton=singleton)
    return _out(_per_turn(adv, episodes))


def drgrpo(batch, *, episode_stats="episodes", singleton="zero") -> Tensor:
    """A_i = R_i - mean_g R."""
    return grpo(batch, scale="none", episode_stats=episode_stats, singleton=singleton)


def rloo(batch, *, singleton="zero") -> Tensor:
    """A_i = R_i - mean_{j in g, j != i} R_j."""
    cols = _columns(batch)
    episodes = _episodes(cols["turn"])
    returns = _episode_returns(cols, episodes)
    members: dict[int, list[int]] = defaultdict(list)
    for e, rows in enumerate(episodes):
        members[cols["group"][rows[0]]].append(e)
    adv = [0.0] * len(episodes)
    for group in members.values():
        for i in group:
            others = [returns[j] for j in group if j != i]
            if others:
                adv[i] = returns[i] - sum(others) / len(others)
            else:
                adv[i] = 0.0 if singleton == "zero" else returns[i]
    return _out(_per_turn(adv, episodes))


def _whiten(values: list[float], weights: list[float] | None, *, std, eps, singleton) -> list[float]:
    return _normalize_by([0] * len(values), values, weights, scale=True, std=std, eps=eps, singleton=singleton)


def reinforce_pp(batch, *, episode_stats="episodes", whiten_over="episodes", std="population", eps=1e-6,
                 singleton="zero") -> Tensor:
    """A_i = R_i - mean_g R, then whitened over the batch's episodes, turns or loss-masked tokens."""
    cols = _columns(batch)
    episodes = _episodes(cols["turn"])
    centred = drgrpo(batch, episode_stats=episode_stats, singleton=singleton).tolist()
    how = dict(std=std, eps=eps, singleton=singleton)
    if whiten_over == "episodes":
        return _out(_per_turn(_whiten([centred[rows[0]] for rows in episodes], None, **how), episodes))
    weights = _token_counts(batch) if whiten_over == "tokens" else None
    return _out(_whiten(centred, weights, **how))


def turn_grpo(batch, *, gamma=1.0, order="normalize_then_discount", scale="std", std="population", eps=1e-6,
              singleton="zero") -> Tensor:
    """A_{i,t} = r~_{i,t} + gamma * A_{i,t+1}, r~ = per-turn rewards z-scored over the group's turn rows."""
    cols = _columns(batch)
    episodes = _episodes(cols["turn"])
    how = dict(scale=scale == "std", std=std, eps=eps, singleton=singleton)
    if order == "normalize_then_discount":
        return _out(_discount(_normalize_by(cols["group"], cols["reward"], **how), episodes, gamma))
    return _out(_normalize_by(cols["group"], _discount(cols["reward"], episodes, gamma), **how))


def _similarity_buckets(groups: list[int], texts: Sequence[str], threshold: float) -> list[tuple[int, int]]:
    """Greedy: each text joins the first earlier bucket of its group whose first text is similar enough."""
    buckets: dict[int, list[str]] = defaultdict(list)
    keys = []
    for g, text in zip(groups, texts):
        reps = buckets[g]
        for k, rep in enumerate(reps):
            if difflib.SequenceMatcher(None, text, rep).ratio() >= threshold:
                keys.append((g, k))
                break
        else:
            keys.append((g, len(reps)))
            reps.append(text)
    return keys


def gigpo(batch, *, mode="mean_std_norm", gamma=0.95, omega=1.0, invalid_penalty=0.1,
          penalty_scope="step", episode_stats="episodes", grouping="exact", similarity_threshold=0.95,
          std="population", eps=1e-6, singleton="zero", episode_singleton="zero") -> Tensor:
    """A_{i,t} = A^E_{i(,t)} + omega * (G~_{i,t} - mean_B G~) / (std_B G~ + eps), G~ = G - penalty * invalid."""
    cols = _columns(batch)
    episodes = _episodes(cols["turn"])
    scale = mode == "mean_std_norm"
    invalid = cols.get("invalid", [False] * len(cols["turn"]))
    if penalty_scope == "step_and_outcome":
        if episode_stats != "turns":
            raise ValueError("gigpo: penalty_scope='step_and_outcome' needs episode_stats='turns'")
        returns_of = _per_turn(_episode_returns(cols, episodes), episodes)
        scores = [r - invalid_penalty * bad for r, bad in zip(returns_of, invalid)]
        episode_level = _normalize_by(cols["group"], scores, scale=scale, std=std, eps=eps,
                                      singleton=episode_singleton)
    else:
        episode_level = grpo(batch, scale="std" if scale else "none", episode_stats=episode_stats, std=std, eps=eps,
                             singleton=episode_singleton).tolist()
    returns = _discount(cols["reward"], episodes, gamma)
    returns = [g - invalid_penalty * bad for g, bad in zip(returns, invalid)]
    if grouping == "exact":
        buckets = list(zip(cols["group"], cols["state"]))
    else:
        if batch.state_text is None:
            raise ValueError("gigpo: grouping='similarity' needs batch.state_text, one string per turn")
        buckets = _similarity_buckets(cols["group"], batch.state_text, similarity_threshold)
    step_level = _normalize_by(buckets, returns, scale=scale, std=std, eps=eps, singleton=singleton)
    return _out([e + omega * s for e, s in zip(episode_level, step_level)])


def igpo(batch, *, alpha=1.0, gamma=1.0, normalize="joint", order="normalize_then_discount", std="population",
         eps=1e-6, singleton="zero") -> Tensor:
    """A_t = r~_t + gamma * A_{t+1}; r_t = intrinsic_t before the last turn, alpha * R_i on it."""
    if batch.intrinsic is None:
        raise ValueError("igpo reads the per-turn information gains from batch.intrinsic, which is None")
    if normalize == "separate" and order == "discount_then_normalize":
        raise ValueError("igpo: normalize='separate' needs order='normalize_then_discount'")
    cols = _columns(batch)
    episodes = _episodes(cols["turn"])
    returns = _episode_returns(cols, episodes)
    reward = list(cols["intrinsic"])
    last = [False] * len(reward)
    for e, rows in enumerate(episodes):
        reward[rows[-1]] = alpha * returns[e]
        last[rows[-1]] = True
    keys = cols["group"] if normalize == "joint" else list(zip(cols["group"], last))
    how = dict(scale=True, std=std, eps=eps, singleton=singleton)
    if order == "normalize_then_discount":
        return _out(_discount(_normalize_by(keys, reward, **how), episodes, gamma))
    return _out(_normalize_by(keys, _discount(reward, episodes, gamma), **how))


def prime(batch, *, gamma=1.0, process_loo="paper", whiten_over="turns", std="population", eps=1e-6,
          singleton="zero") -> Tensor:
    """A = whiten(return-to-go of (q - b^q) plus (R - b^R) on the last turn), b = leave-one-out means."""
    if batch.intrinsic is None:
        raise ValueError("prime reads the per-turn implicit process rewards from batch.intrinsic, which is None")
    cols = _columns(batch)
    episodes = _episodes(cols["turn"])
    q = cols["intrinsic"]
    returns = _episode_returns(cols, episodes)
    mean_q = [sum(q[r] for r in rows) / len(rows) for rows in episodes]
    members: dict[int, list[int]] = defaultdict(list)
    for e, rows in enumerate(episodes):
        members[cols["group"][rows[0]]].append(e)
    turn_adv = [0.0] * len(q)
    for group in members.values():
        n = len(group)
        for i in group:
            rows = episodes[i]
            if n == 1:
                if singleton == "raw":
                    for r in rows:
                        turn_adv[r] = q[r]
                    turn_adv[rows[-1]] += returns[i]
                continue
            outcome_adv = returns[i] - sum(returns[j] for j in group if j != i) / (n - 1)
            for r in rows:
                if process_loo == "paper":
                    baseline = sum(mean_q[j] for j in group if j != i) / (n - 1)
                else:
                    baseline = (sum(mean_q[j] for j in group) - q[r]) / (n - 1)
                turn_adv[r] = q[r] - baseline
            turn_adv[rows[-1]] += outcome_adv
    returns_to_go = _discount(turn_adv, episodes, gamma)
    weights = _token_counts(batch) if whiten_over == "tokens" else None
    return _out(_whiten(returns_to_go, weights, std=std, eps=eps, singleton=singleton))


def _tree_paths(batch, gamma: float):
    """The literal tree of a branched batch: per episode its rows, its path of nodes from its group's first
    state (one node per state, the state after its last turn included) and its full path's rewards.

    A node is ("root", group) or ("after", episode, turn): the state after `turn` of `episode`. A branch of
    p at turn t shares p's path up to p's state before turn t.
    """
    if batch.parent is None:
        raise ValueError("this estimator reads branch episodes (TurnBatch.parent and branch_turn), which the batch "
                         "does not have")
    cols = _columns(batch)
    parents, branch_turns = batch.parent.tolist(), batch.branch_turn.tolist()
    episodes = _episodes(cols["turn"])
    index_of = {cols["episode"][rows[0]]: i for i, rows in enumerate(episodes)}
    nodes: list[list] = []  # per episode: nodes of its path, the first state to the state after its last turn
    rewards: list[list[float]] = []  # per episode: rewards along its path
    own_start: list[int] = []  # per episode: the position in its path of its turn 0
    for i, rows in enumerate(episodes):
        parent = parents[rows[0]]
        if parent == -1:
            prefix_nodes, prefix_rewards = [("root", cols["group"][rows[0]])], []
        else:
            p, t = index_of[parent], branch_turns[rows[0]]
            cut = own_start[p] + t  # position of p's state before its turn t
            prefix_nodes, prefix_rewards = nodes[p][: cut + 1], rewards[p][:cut]
        own_start.append(len(prefix_rewards))
        nodes.append(prefix_nodes + [("after", i, k) for k in range(len(rows))])
        rewards.append(prefix_rewards + [cols["reward"][r] for r in rows])
    return cols, episodes, nodes, rewards, own_start


def _to_go(rewards: list[float], gamma: float) -> list[float]:
    """Return-to-go at every position of a path, the position after the last reward (0) included."""
    out = [0.0] * (len(rewards) + 1)
    for k in reversed(range(len(rewards))):
        out[k] = rewards[k] + gamma * out[k + 1]
    return out


def _branched_advantages(batch, gamma: float, train_branches: bool, scale: str, credit: str, eps: float, value,
                         has_baseline=lambda e, position: True) -> Tensor:
    """credit="turn": A_{e,t} = r + gamma * V(next state) - V(state), V(after the last turn) = 0, and 0 where
    not `has_baseline(e, position)`. credit="segment": turn t of e lies in the segment from its branch point p
    (the last turn <= t that is e's first or that another episode starts from) to the next one q (or the end),
    and gets sum_{p <= j < q} gamma^(j-p) r_j + gamma^(q-p) V(state before q) - V(state before p), 0 where p
    has no baseline. `value(e, position)`; with scale="batch_rms" divided by the root mean square of the
    trained rows' nonzero advantages (+ eps)."""
    cols, episodes, nodes, rewards, own_start = _tree_paths(batch, gamma)
    parents = batch.parent.tolist()
    starting = defaultdict(int)  # node -> episodes that start there
    for e in range(len(episodes)):
        starting[nodes[e][own_start[e]]] += 1
    out = [0.0] * batch.num_turns
    trained = []
    for e, rows in enumerate(episodes):
        if parents[rows[0]] != -1 and not train_branches:
            continue
        ends = [t for t in range(1, len(rows)) if starting[nodes[e][own_start[e] + t]] > 0] + [len(rows)]
        for t, row in enumerate(rows):
            here = own_start[e] + t
            if credit == "turn":
                after = 0.0 if t == len(rows) - 1 else value(e, here + 1)
                if has_baseline(e, here):
                    out[row] = cols["reward"][row] + gamma * after - value(e, here)
            else:
                p = max([0] + [q for q in ends if q <= t])
                q = min(q for q in ends if q > t)
                if has_baseline(e, own_start[e] + p):
                    between = sum(gamma ** (j - p) * cols["reward"][rows[j]] for j in range(p, q))
                    after = 0.0 if q == len(rows) else value(e, own_start[e] + q)
                    out[row] = between + gamma ** (q - p) * after - value(e, own_start[e] + p)
            trained.append(row)
    informative = [out[r] for r in trained if abs(out[r]) > 1e-12]
    if scale == "batch_rms" and informative:
        rms = math.sqrt(sum(a * a for a in informative) / len(informative))
        out = [a / (rms + eps) for a in out]
    return _out(out)


def vineppo(batch, *, gamma=1.0, train_branches=False, scale="none", credit="segment", eps=1e-6) -> Tensor:
    """V(state of e) = mean return of the other episodes that start there; a turn from a state with none gets 0,
    and such a state as the next state is valued by e's own return-to-go."""
    cols, episodes, nodes, rewards, own_start = _tree_paths(batch, gamma)
    starts: dict = defaultdict(list)  # node -> (episode, its discounted return from there)
    for e in range(len(episodes)):
        starts[nodes[e][own_start[e]]].append((e, _to_go(rewards[e], gamma)[own_start[e]]))

    def others(e: int, position: int) -> list[float]:
        return [g for d, g in starts.get(nodes[e][position], []) if d != e]

    def value(e: int, position: int) -> float:
        found = others(e, position)
        return sum(found) / len(found) if found else _to_go(rewards[e], gamma)[position]

    return _branched_advantages(batch, gamma, train_branches, scale, credit, eps, value,
                                lambda e, position: bool(others(e, position)))


def spo_tree(batch, *, gamma=1.0, train_branches=True, scale="none", credit="segment", eps=1e-6) -> Tensor:
    """V(node) = mean, over every episode whose path passes through the node, of its return-to-go from there."""
    cols, episodes, nodes, rewards, own_start = _tree_paths(batch, gamma)
    through: dict = defaultdict(list)
    for e in range(len(episodes)):
        for node, g in zip(nodes[e], _to_go(rewards[e], gamma)):
            through[node].append(g)

    def value(e: int, position: int) -> float:
        returns = through[nodes[e][position]]
        return sum(returns) / len(returns)

    return _branched_advantages(batch, gamma, train_branches, scale, credit, eps, value)
