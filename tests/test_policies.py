"""Action distributions and the actor-critic network of the policy-gradient agents."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from classic_rl.policies import (
    ActorCritic,
    Categorical,
    DiagGaussian,
    PolicyConfig,
    TanhGaussian,
    obs_to_numpy,
    obs_to_tensor,
)


def test_categorical_sampling_matches_probabilities():
    torch.manual_seed(0)
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.8, 0.15, 0.05]])
    dist = Categorical(probs.log().repeat(20_000, 1))
    samples = dist.sample().reshape(20_000, 2)
    for row in range(2):
        freq = torch.bincount(samples[:, row], minlength=3).float() / 20_000
        assert torch.allclose(freq, probs[row], atol=0.015)
    assert samples.min() >= 0 and samples.max() <= 2


def test_categorical_log_prob_entropy_kl_match_torch():
    logits = torch.randn(5, 4)
    other_logits = torch.randn(5, 4)
    ours, ref = Categorical(logits), torch.distributions.Categorical(logits=logits)
    actions = torch.tensor([0, 3, 1, 2, 2])
    assert torch.allclose(ours.log_prob(actions), ref.log_prob(actions), atol=1e-6)
    assert torch.allclose(ours.entropy(), ref.entropy(), atol=1e-6)
    ref_kl = torch.distributions.kl_divergence(ref, torch.distributions.Categorical(logits=other_logits))
    assert torch.allclose(ours.kl(Categorical(other_logits)), ref_kl, atol=1e-6)


def test_diag_gaussian_matches_torch_normal():
    mean, log_std = torch.randn(6, 2), torch.randn(6, 2) * 0.3
    mean2, log_std2 = torch.randn(6, 2), torch.randn(6, 2) * 0.3
    ours = DiagGaussian(mean, log_std)
    ref = torch.distributions.Normal(mean, log_std.exp())
    x = torch.randn(6, 2)
    assert torch.allclose(ours.log_prob(x), ref.log_prob(x).sum(-1), atol=1e-5)
    assert torch.allclose(ours.entropy(), ref.entropy().sum(-1), atol=1e-5)
    ref_kl = torch.distributions.kl_divergence(ref, torch.distributions.Normal(mean2, log_std2.exp())).sum(-1)
    assert torch.allclose(ours.kl(DiagGaussian(mean2, log_std2)), ref_kl, atol=1e-5)


def test_tanh_gaussian_log_prob_is_the_density_of_the_squashed_action():
    """P(a0 <= A <= a0 + h), from the Gaussian CDF at atanh of the bounds, ~= h * p(a0)."""
    low, high = torch.tensor([-2.0]), torch.tensor([2.0])
    mean, std = 0.3, 0.7
    dist = TanhGaussian(torch.tensor([[mean]]), torch.tensor([[math.log(std)]]), low, high)
    normal = torch.distributions.Normal(
        torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    )

    def pre_squash(a: float) -> torch.Tensor:  # inverse of a = low + (tanh(u) + 1) * (high - low) / 2
        return torch.atanh(torch.tensor((a - (-2.0)) / 2.0 - 1.0, dtype=torch.float64))

    h = 1e-4
    for a0 in (-1.9, -0.5, 0.0, 0.8, 1.7):
        prob = float(normal.cdf(pre_squash(a0 + h)) - normal.cdf(pre_squash(a0)))
        u = pre_squash(a0 + h / 2).float().reshape(1, 1)
        density = float(dist.log_prob(u).exp())
        assert density * h == pytest.approx(prob, rel=1e-3)
        assert float(dist.squash(u)) == pytest.approx(a0 + h / 2, abs=1e-5)


def test_tanh_gaussian_density_integrates_to_one_over_the_bounds():
    low, high = torch.tensor([-1.0]), torch.tensor([3.0])
    dist = TanhGaussian(torch.tensor([[0.5]]), torch.tensor([[0.2]]), low, high)
    # integrate p(a) da over the bounds through u: da = scale * (1 - tanh(u)^2) du
    u = torch.linspace(-12, 12, 200_001).reshape(-1, 1)
    density = dist.log_prob(u).exp()
    da_du = 2.0 * (1 - torch.tanh(u[:, 0]) ** 2)
    integral = torch.trapezoid(density * da_du, u[:, 0])
    assert float(integral) == pytest.approx(1.0, abs=1e-3)


def _spaces(kind: str):
    obs = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    if kind == "discrete":
        return obs, gym.spaces.Discrete(4)
    return obs, gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32))


@pytest.mark.parametrize("action_bound", ["clip", "tanh"])
@pytest.mark.parametrize("state_dependent_std", [False, True])
def test_continuous_actions_stay_in_bounds_and_log_std_starts_at_init(action_bound, state_dependent_std):
    torch.manual_seed(0)
    obs_space, act_space = _spaces("continuous")
    cfg = PolicyConfig(action_bound=action_bound, state_dependent_std=state_dependent_std, log_std_init=1.5)
    policy = ActorCritic(obs_space, act_space, cfg)
    obs = torch.rand(64, 3) * 2 - 1
    dist, value = policy(obs)
    assert value.shape == (64,)
    assert isinstance(dist, TanhGaussian if action_bound == "tanh" else DiagGaussian)
    assert torch.allclose(dist.log_std, torch.full_like(dist.log_std, 1.5), atol=0.1)
    actions = policy.to_env(dist.sample())
    assert actions.shape == (64, 2) and actions.dtype == np.float32
    assert (actions >= act_space.low).all() and (actions <= act_space.high).all()
    assert dist.log_prob(dist.sample()).shape == (64,)


def test_discrete_policy_shapes_and_parameter_split():
    obs_space, act_space = _spaces("discrete")
    policy = ActorCritic(obs_space, act_space, PolicyConfig(hidden=[16]))
    dist, value = policy(torch.zeros(5, 3))
    assert dist.logits.shape == (5, 4) and value.shape == (5,)
    actor, critic = policy.actor_parameters(), policy.critic_parameters()
    assert {id(p) for p in actor}.isdisjoint(id(p) for p in critic)
    assert len(actor) + len(critic) == len(list(policy.parameters()))
    shared = ActorCritic(obs_space, act_space, PolicyConfig(hidden=[16], share_trunk=True))
    assert len(shared.actor_parameters()) + len(shared.critic_parameters()) == len(list(shared.parameters()))


def test_policy_without_critic_has_zero_value():
    obs_space, act_space = _spaces("discrete")
    policy = ActorCritic(obs_space, act_space, PolicyConfig(), critic=False)
    _, value = policy(torch.randn(4, 3))
    assert torch.equal(value, torch.zeros(4)) and policy.critic_parameters() == []


def test_bad_settings_raise_with_the_valid_choices():
    obs_space, act_space = _spaces("continuous")
    with pytest.raises(ValueError, match="clip, tanh"):
        ActorCritic(obs_space, act_space, PolicyConfig(action_bound="squash"))
    unbounded = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    with pytest.raises(ValueError, match="finite"):
        ActorCritic(obs_space, unbounded, PolicyConfig(action_bound="tanh"))


def test_discrete_observations_are_one_hot():
    space = gym.spaces.Discrete(5)
    out = obs_to_tensor(np.array([0, 3]), space)
    assert torch.equal(out, torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 0, 1.0, 0]]))
    assert np.array_equal(obs_to_numpy(np.array([0, 3]), space), out.numpy())


@pytest.mark.parametrize(
    "kind, settings",
    [
        ("discrete", {}),
        ("discrete", {"share_trunk": True, "activation": "relu"}),
        ("continuous", {}),
        ("continuous", {"action_bound": "tanh", "activation": "elu"}),
        ("continuous", {"state_dependent_std": True, "activation": "silu", "log_std_init": -1.0}),
        ("continuous", {"state_dependent_std": True, "action_bound": "tanh", "share_trunk": True}),
    ],
)
def test_numpy_actor_matches_the_torch_policy(kind, settings):
    """The rollout loop acts in numpy: its log-probs, values and env actions must be the torch ones."""
    torch.manual_seed(0)
    obs_space, act_space = _spaces(kind)
    policy = ActorCritic(obs_space, act_space, PolicyConfig(hidden=[32, 16], **settings))
    obs = np.random.default_rng(0).uniform(-1, 1, size=(64, 3)).astype(np.float32)
    actor = policy.numpy_actor()
    raw, logp, value = actor.act(obs, np.random.default_rng(1))
    with torch.no_grad():
        dist, ref_value = policy(torch.from_numpy(obs))
        ref_logp = dist.log_prob(torch.from_numpy(raw))
        ref_actions = policy.to_env(torch.from_numpy(raw))
    assert np.allclose(logp, ref_logp.numpy(), atol=1e-4)
    assert np.allclose(value, ref_value.numpy(), atol=1e-5)
    assert np.allclose(np.asarray(actor.to_env(raw)), ref_actions, atol=1e-6)
    assert np.allclose(actor.value(obs), value)


def test_numpy_actor_samples_from_the_policy_distribution():
    torch.manual_seed(0)
    obs_space, act_space = _spaces("discrete")
    policy = ActorCritic(obs_space, act_space, PolicyConfig(ortho_init=False))
    obs = np.zeros((20_000, 3), np.float32)
    raw, _, _ = policy.numpy_actor().act(obs, np.random.default_rng(0))
    with torch.no_grad():
        probs = policy.distribution(torch.zeros(1, 3)).probs[0].numpy()
    assert np.allclose(np.bincount(raw, minlength=4) / 20_000, probs, atol=0.015)
    cont_space = _spaces("continuous")[1]
    gauss = ActorCritic(obs_space, cont_space, PolicyConfig(log_std_init=-0.5))
    raw, _, _ = gauss.numpy_actor().act(obs, np.random.default_rng(0))
    with torch.no_grad():
        mean = gauss.distribution(torch.zeros(1, 3)).mean[0].numpy()
    assert np.allclose(raw.mean(0), mean, atol=0.02) and np.allclose(raw.std(0), np.exp(-0.5), atol=0.02)


def test_numpy_actor_sees_optimizer_updates():
    """It holds views of the weights, so an in-place optimizer step shows without rebuilding."""
    obs_space, act_space = _spaces("discrete")
    policy = ActorCritic(obs_space, act_space, PolicyConfig())
    actor = policy.numpy_actor()
    obs = np.ones((2, 3), np.float32)
    before = actor.value(obs).copy()
    with torch.no_grad():
        for p in policy.critic_parameters():
            p.add_(0.1)
    assert not np.allclose(actor.value(obs), before)
    assert np.allclose(actor.value(obs), policy.value(torch.from_numpy(obs)).detach().numpy(), atol=1e-5)
