"""DQN on image observations: the Nature CNN is chosen for (C, H, W) uint8 frames, replay keeps uint8.

A stand-in for an Atari game (which needs ale-py): 4 stacked 84x84 uint8 frames, as the Atari
preprocessing in :mod:`classic_rl.env_utils` produces them.
"""

import gymnasium as gym
import numpy as np
import torch

import classic_rl
from classic_rl.nets import NatureCNN


class FakeFrames(gym.Env):
    """Frames all of one brightness; action 1 pays when they are bright, action 0 when dark."""

    observation_space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._frames(), {}

    def _frames(self) -> np.ndarray:
        self.bright = bool(self.np_random.integers(2))
        return np.full((4, 84, 84), 200 if self.bright else 20, dtype=np.uint8)

    def step(self, action):
        reward = float(int(action) == int(self.bright))
        self.t += 1
        return self._frames(), reward, False, self.t >= 20, {}


def test_image_observations_get_the_nature_cnn_and_uint8_replay():
    agent = classic_rl.make("dqn", env=FakeFrames(), seed=0, hidden=[], buffer_size=200, learning_starts=16,
                            batch_size=8, train_freq=4, gradient_steps=1, target_update_interval=20)
    assert isinstance(agent.q_net.cnn, NatureCNN)
    assert agent.loss_and_gradient == agent.autograd_loss_and_gradient  # the fused backend covers MLPs only
    before = agent.q_flat.detach().clone()
    agent.learn(total_steps=40, progress=False)
    assert agent.buffer.obs.dtype == np.uint8 and agent.buffer.obs.shape == (200, 4, 84, 84)
    assert agent.buffer.next_obs.dtype == np.uint8 and len(agent.buffer) == 40
    assert set(np.unique(agent.buffer.obs[:40])) <= {20, 200}  # raw frames, not scaled copies
    assert agent.n_updates == 6  # steps 20, 24, ..., 40
    assert not torch.equal(before, agent.q_flat.detach())
    action = agent.act(FakeFrames().reset(seed=1)[0])
    assert action in (0, 1)


def test_nature_cnn_feeds_its_convolutions_frames_scaled_to_unit_range():
    torch.manual_seed(0)
    cnn = NatureCNN((4, 84, 84))
    seen = []
    cnn.convs[0].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    frames = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    assert cnn(frames).shape == (2, 512)
    torch.testing.assert_close(seen[0], frames.float() / 255.0)
