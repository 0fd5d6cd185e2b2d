"""The Gaussian diffusion process, apart from any network (as improved-diffusion's GaussianDiffusion).

Forward: q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I) (DDPM eq. 4). Reverse: ancestral DDPM
steps through the posterior q(x_{t-1} | x_t, x0) (DDPM eq. 6-7) or DDIM steps (Song et al. 2021,
eq. 12), each a small function of the x0 and eps estimates. Conversions between eps, x0 and v
(Salimans & Ho 2022) let the network predict any of them. Tensors x0, x_t, eps: (B, K, H, W);
t: (B,) int64 timesteps in [0, T).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .schedules import extract, make_beta_schedule

SAMPLERS = ("ddim", "ddpm")


class GaussianDiffusion(nn.Module):
    """The schedule's precomputed terms as buffers (they move with the model, and are rebuilt
    from the config, not saved: persistent=False keeps checkpoints to learned weights)."""

    def __init__(self, schedule: str, timesteps: int):
        super().__init__()
        betas = make_beta_schedule(schedule, timesteps)  # float64 here, float32 buffers
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        # DDPM eq. 7: posterior q(x_{t-1} | x_t, x0)
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        buffers = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": (1 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1 / alphas_cumprod - 1).sqrt(),
            "posterior_variance": posterior_variance,
            # the variance is 0 at t = 0: clip the log to the next value (improved-diffusion)
            "posterior_log_variance_clipped": torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]])),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),
            "posterior_mean_coef2": (1 - alphas_cumprod_prev) * alphas.sqrt() / (1 - alphas_cumprod),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """DDPM eq. 4: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x0.ndim) * x0
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise
        )

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """DDPM eq. 7: mean, variance and clipped log variance of q(x_{t-1} | x_t, x0)."""
        mean = (
            extract(self.posterior_mean_coef1, t, x_t.ndim) * x0 + extract(self.posterior_mean_coef2, t, x_t.ndim) * x_t
        )
        variance = extract(self.posterior_variance, t, x_t.ndim)
        log_variance = extract(self.posterior_log_variance_clipped, t, x_t.ndim)
        return mean, variance, log_variance

    def predict_x0_from_eps(self, x_t, t, eps):
        """Invert eq. 4: x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
        return (
            extract(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
            - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps
        )

    def predict_eps_from_x0(self, x_t, t, x0):
        """Invert eq. 4 for eps: eps = (x_t / sqrt(abar) - x0) / sqrt(1 / abar - 1)."""
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - x0) / extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim
        )

    def predict_v(self, x0, t, eps):
        """Salimans & Ho 2022: v = sqrt(abar) eps - sqrt(1 - abar) x0."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x0.ndim) * eps
            - extract(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0
        )

    def predict_x0_from_v(self, x_t, t, v):
        """x0 = sqrt(abar) x_t - sqrt(1 - abar) v."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x_t.ndim) * x_t
            - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * v
        )

    def timesteps_for(self, sampler: str, steps: int) -> list:
        """The timesteps a sampler visits, from T-1 down to 0: all T for "ddpm", `steps` evenly
        spaced ones for "ddim" (DDIM's uniform skip)."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if sampler == "ddpm":
            return list(range(self.num_timesteps - 1, -1, -1))
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"steps must be between 1 and {self.num_timesteps}, got {steps}")
        spaced = torch.linspace(self.num_timesteps - 1, 0, steps).round().long().tolist()
        return list(dict.fromkeys(spaced))  # unique, order kept

    def ddpm_step(self, x0: torch.Tensor, x_t: torch.Tensor, step: int, noise: torch.Tensor | None) -> torch.Tensor:
        """DDPM eq. 6-7: x_{t-1} ~ N(posterior mean, posterior variance); the mean alone at t = 0."""
        t = torch.full((x_t.shape[0],), step, device=x_t.device, dtype=torch.long)
        mean, _, log_variance = self.q_posterior(x0, x_t, t)
        if step == 0:
            return mean
        return mean + (0.5 * log_variance).exp() * noise

    def ddim_step(
        self, x0: torch.Tensor, eps: torch.Tensor, step: int, prev_step: int, eta: float, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """DDIM eq. 12 from timestep `step` to `prev_step` (-1: the end, abar = 1)."""
        alpha_bar = self.alphas_cumprod[step]
        alpha_bar_prev = self.alphas_cumprod[prev_step] if prev_step >= 0 else torch.ones_like(alpha_bar)
        return ddim_step(x0, eps, alpha_bar_prev, ddim_sigma(alpha_bar, alpha_bar_prev, eta), noise)


def ddim_step(
    x0: torch.Tensor, eps: torch.Tensor, alpha_bar_prev: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor | None
) -> torch.Tensor:
    """DDIM eq. 12: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z."""
    direction = (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt() * eps
    x_prev = alpha_bar_prev.sqrt() * x0 + direction
    if noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev


def ddim_sigma(alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """DDIM eq. 16: eta = 0 is deterministic DDIM, eta = 1 matches DDPM's posterior variance."""
    return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).clamp(min=0).sqrt()


class StepNoise:
    """The noise of the stochastic reverse steps, drawn per batch row from its own generator when
    sampling is seeded: a row's noise then depends only on the seed and the row's position, not
    on how many rows are sampled with it (so --batch-size never changes a result).

    The row generators are seeded from a fork of `generator` made before anything is drawn from
    it, so the starting noise x_T stays the first draw of `generator` itself."""

    def __init__(self, shape: tuple, generator: torch.Generator | None, device):
        self.shape, self.device, self.rows = shape, device, None
        if generator is not None:
            fork = torch.Generator(device=generator.device)
            fork.set_state(generator.get_state())
            seeds = torch.randint(0, 2**62, (shape[0],), generator=fork, device=generator.device).tolist()
            self.rows = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def __call__(self) -> torch.Tensor:
        if self.rows is None:
            return torch.randn(self.shape, device=self.device)
        return torch.stack([torch.randn(self.shape[1:], generator=row, device=self.device) for row in self.rows])
