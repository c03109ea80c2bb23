"""The one numpy MLP forward, the one activation table and the one running normaliser."""

import numpy as np
import pytest
import torch

import classic_rl
from classic_rl.nets import ACTIVATIONS, NumpyMLP, mlp, numpy_forward, numpy_layers_from_weights
from classic_rl.normalizers import RunningMeanStd


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_numpy_forward_matches_torch_for_every_activation(act):
    torch.manual_seed(0)
    net = mlp(5, [16, 8], 3, act=act)
    trunk = mlp(5, [16, 8], act=act)  # ends with an activation
    x = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(NumpyMLP(net)(x), net(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(NumpyMLP(trunk)(x), trunk(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
        weights = [p.numpy() for p in net.parameters()]
        layers = numpy_layers_from_weights(weights, act, out_act="tanh")
        expected = torch.tanh(net(torch.from_numpy(x))).numpy()
        np.testing.assert_allclose(numpy_forward(layers, x), expected, rtol=1e-5, atol=1e-6)


def test_numpy_mlp_sees_in_place_updates_and_rejects_unknown_layers():
    net = mlp(3, [4], 2)
    forward = NumpyMLP(net)
    x = np.ones((1, 3), dtype=np.float32)
    before = forward(x).copy()
    with torch.no_grad():
        net[-1].bias.add_(1.0)
    np.testing.assert_allclose(forward(x), before + 1.0, rtol=1e-6)
    with pytest.raises(TypeError, match="Dropout"):
        NumpyMLP(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Dropout()))
    with pytest.raises(ValueError, match="Unknown activation 'gelu'"):
        mlp(3, [4], 2, act="gelu")


def test_running_mean_std_merges_samples_and_sums_alike():
    data = np.random.default_rng(2).normal(1.0, 3.0, size=(200, 2))
    by_rows, by_sums = RunningMeanStd((2,), epsilon=0.0), RunningMeanStd((2,), epsilon=0.0)
    for chunk in np.array_split(data, 5):
        by_rows.update(chunk)
        by_sums.update_from_sums(len(chunk), chunk.sum(0), (chunk**2).sum(0))
    for rms in (by_rows, by_sums):
        np.testing.assert_allclose(rms.mean, data.mean(0))
        np.testing.assert_allclose(rms.std, data.std(0))
    assert RunningMeanStd((2,), epsilon=0.0).std.tolist() == [1.0, 1.0]  # unknown: pass unscaled


def test_ars_loads_statistics_saved_in_the_old_format(tmp_path):
    agent = classic_rl.make("ars", env="Pendulum-v1", n_workers=0, n_directions=2).learn(1600, progress=False)
    stat = agent.obs_stat
    old = {"theta": torch.from_numpy(agent.theta.copy()), "obs_mean": torch.from_numpy(stat.mean.copy()),
           "obs_m2": torch.from_numpy(stat.var * stat.count), "obs_count": torch.tensor([stat.count], dtype=torch.float64)}
    loaded = classic_rl.make("ars", env="Pendulum-v1", n_workers=0, n_directions=2)
    loaded.load_state_tensors(old)
    np.testing.assert_allclose(loaded.obs_stat.std, stat.std, rtol=1e-12)
    obs = np.array([0.5, -0.5, 1.0], dtype=np.float32)
    np.testing.assert_allclose(loaded.act(obs), agent.act(obs), rtol=1e-12)
