"""HAQ's agent: DDPG over the per-layer steps of :class:`~tvm_mpq.policy_search.env.QuantEnv`.

As in HAQ (Wang et al. 2019, and its released agent): an actor ``state -> action in [0, 1]`` and a
critic ``(state, action) -> value``, both two hidden layers of 300 units; a replay buffer of every
step of every episode, each step credited with its episode's final reward minus a moving-average
baseline (the reward is only known at the end); ``warmup`` episodes of uniform random actions
first, then the actor's action plus truncated normal noise whose sigma decays each episode; soft
target updates with ``tau``. Everything is seeded: two runs with the same seed and the same
reward function return the same policy.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DDPGConfig:
    episodes: int = 60
    warmup: int = 15
    hidden: int = 300
    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    tau: float = 0.01
    batch_size: int = 64
    updates_per_episode: int = 20
    sigma: float = 0.5
    sigma_decay: float = 0.95
    baseline_decay: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.episodes < 1 or not 0 <= self.warmup <= self.episodes:
            raise ValueError(f"DDPG needs episodes >= 1 and 0 <= warmup <= episodes, got {self.episodes} / {self.warmup}")


def _mlp(inp: int, hidden: int, out: int, final=None) -> nn.Sequential:
    layers = [nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out)]
    return nn.Sequential(*layers, *([final] if final is not None else []))


@dataclass
class EpisodeLog:
    episode: int
    reward: float
    latency_s: float
    feasible: bool
    metrics: dict
    bits: dict
    wall_s: float


@dataclass
class AgentResult:
    best_policy: object
    best_reward: float
    best_info: dict
    history: list = field(default_factory=list)
    wall_s: float = 0.0


class DDPGAgent:
    def __init__(self, state_dim: int, config: DDPGConfig = DDPGConfig()):
        self.cfg = config
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.actor = _mlp(state_dim, config.hidden, 1, nn.Sigmoid())
        self.critic = _mlp(state_dim + 1, config.hidden, 1)
        self.actor_target, self.critic_target = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.opt_actor = torch.optim.Adam(self.actor.parameters(), lr=config.lr_actor)
        self.opt_critic = torch.optim.Adam(self.critic.parameters(), lr=config.lr_critic)
        self.buffer: list[tuple] = []
        self.sigma = config.sigma
        self.baseline: float | None = None

    def act(self, state: np.ndarray, episode: int) -> float:
        if episode < self.cfg.warmup:
            return float(self.rng.uniform(0, 1))
        with torch.no_grad():
            mu = float(self.actor(torch.as_tensor(state, dtype=torch.float32)[None])[0, 0])
        for _ in range(100):  # truncated normal on [0, 1]
            a = self.rng.normal(mu, self.sigma)
            if 0.0 <= a <= 1.0:
                return float(a)
        return float(np.clip(mu, 0, 1))

    def remember(self, transitions: list[tuple], reward: float) -> None:
        """An episode's (state, action, next_state, done) steps, all credited with its reward."""
        self.baseline = reward if self.baseline is None else self.cfg.baseline_decay * self.baseline + (1 - self.cfg.baseline_decay) * reward
        advantage = reward - self.baseline
        for s, a, s2, done in transitions:
            self.buffer.append((s, a, advantage, s2, done))

    def update(self) -> None:
        if len(self.buffer) < self.cfg.batch_size:
            return
        for _ in range(self.cfg.updates_per_episode):
            idx = self.rng.choice(len(self.buffer), self.cfg.batch_size, replace=False)
            s, a, r, s2, d = (torch.as_tensor(np.array(x), dtype=torch.float32) for x in zip(*[self.buffer[i] for i in idx]))
            with torch.no_grad():
                q_next = self.critic_target(torch.cat([s2, self.actor_target(s2)], 1))[:, 0]
                target = r + (1 - d) * q_next  # gamma = 1 within an episode (HAQ's discount)
            q = self.critic(torch.cat([s, a[:, None]], 1))[:, 0]
            loss_c = nn.functional.mse_loss(q, target)
            self.opt_critic.zero_grad()
            loss_c.backward()
            self.opt_critic.step()
            loss_a = -self.critic(torch.cat([s, self.actor(s)], 1)).mean()
            self.opt_actor.zero_grad()
            loss_a.backward()
            self.opt_actor.step()
            for net, tgt in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
                for p, tp in zip(net.parameters(), tgt.parameters()):
                    tp.data.mul_(1 - self.cfg.tau).add_(self.cfg.tau * p.data)


def haq_search(env, config: DDPGConfig = DDPGConfig(), progress=None) -> AgentResult:
    """Run DDPG on ``env`` for ``config.episodes``; the best feasible policy by reward wins."""
    from tvm_mpq.policy_search.env import STATE_DIM

    agent = DDPGAgent(STATE_DIM, config)
    t0 = time.perf_counter()
    best = AgentResult(None, -np.inf, {})
    for episode in range(config.episodes):
        te = time.perf_counter()
        state, transitions, done = env.reset(), [], False
        while not done:
            action = agent.act(state, episode)
            nxt, reward, done, info = env.step(action)
            transitions.append((state, action, nxt, float(done)))
            state = nxt
        agent.remember(transitions, reward)
        if episode >= config.warmup:
            agent.update()
            agent.sigma *= config.sigma_decay
        log = EpisodeLog(episode, reward, info["latency_s"], info["feasible"], info["metrics"],
                         {n: list(b) for n, b in env.bits.items()}, time.perf_counter() - te)
        best.history.append(log)
        if info["feasible"] and reward > best.best_reward:
            best.best_policy, best.best_reward, best.best_info = info["policy"], reward, info
        logger.info("episode %d: reward %.4f latency %.3f ms %s", episode, reward, 1e3 * info["latency_s"], info["metrics"])
        if progress is not None:
            progress(log)
    best.wall_s = time.perf_counter() - t0
    return best
