"""The standard normal noise behind the evaluation's sampled figures, drawn per image and per sample.

Every evaluated image has a generator of its own, seeded from (the evaluation's seed, the stream,
the image's index among the evaluated images), and draws its samples from it in sample order, in
blocks of a fixed number of samples (``NOISE_BLOCK``). Sample i of image n is therefore the same
number whatever the images per batch, the samples per chunk or the torch thread count (torch draws
normal numbers on one thread), so that the evaluation's figures depend on the chunk plan and the
threads only through float rounding (tests/test_evaluation_noise.py: within 1e-4 nats).

A stream names one use of the noise (the importance samples, the inference gaps' fits ...), so that
two uses never share draws. Measured on 2 busy cores: seeding a generator costs about 15 us (0.15 s
for 10,000 images) and a block of 128 x 50 normal numbers about 5 ns a number; the default k = 5000
evaluation on one thread took 0.057-0.061 s per image with this noise and with one generator per
evaluation (interleaved runs, 96 images).
"""

from __future__ import annotations

import hashlib

import torch

#: Samples per draw from an image's generator, by device type: on the CPU a block costs little memory
#: (128 x latent values per image) and a call's overhead is small against its numbers; an accelerator
#: pays a kernel launch per draw, so it draws larger blocks. Changing a block size changes the draws.
NOISE_BLOCK = {"cpu": 128}
ACCELERATOR_NOISE_BLOCK = 1024
#: torch's CPU generator (mt19937) keeps the low 32 bits of a seed.
SEED_MODULUS = 2**32


def stream_seed(seed: int, stream: str) -> int:
    """A 64-bit number for (``seed``, ``stream``): the streams of one seed are unrelated."""
    digest = hashlib.blake2b(f"{seed}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def image_seeds(seed: int, stream: str, images: range) -> list[int]:
    """The seed of each image's generator: consecutive from the stream's own offset, so that the images of
    one stream never share a generator (for fewer than 2**32 images)."""
    offset = stream_seed(seed, stream)
    return [(offset + image) % SEED_MODULUS for image in images]


def stream_generator(seed: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    """One generator for a draw that is made once, whatever the plan (ELBO surgery's draws over all images)."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, stream) % SEED_MODULUS)


class ImageNoise:
    """eps ~ N(0, I) for the samples of a batch of images, each image's from its own generator.

    ``ImageNoise(seed, range(first, first + B), stream).standard_normal(n, like)`` returns the next n
    samples of each of the B images, ``[n, *like.shape]`` (``like``: ``[B, *event]``, whose device and
    dtype the noise takes); successive calls continue each image's samples where the last one stopped.
    """

    def __init__(self, seed: int, images: range, stream: str = "importance") -> None:
        self.seeds = image_seeds(seed, stream, images)
        self.generators: list[torch.Generator] | None = None
        self.pending: torch.Tensor | None = None  # [B, m, *event]: drawn, not yet handed out

    def __len__(self) -> int:
        return len(self.seeds)

    def standard_normal(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """The next ``n`` samples of every image: ``[n, *like.shape]``, contiguous."""
        if like.shape[0] != len(self.seeds):
            raise ValueError(f"noise for {len(self.seeds)} images, asked for a batch of {like.shape[0]}")
        generators = self.generators_on(like.device)
        block = NOISE_BLOCK.get(like.device.type, ACCELERATOR_NOISE_BLOCK)
        pieces = [] if self.pending is None else [self.pending]
        available = sum(piece.shape[1] for piece in pieces)
        while available < n:
            drawn = torch.empty((len(self.seeds), block, *like.shape[1:]), device=like.device, dtype=like.dtype)
            for generator, row in zip(generators, drawn, strict=True):
                torch.randn(row.shape, generator=generator, out=row)  # a contiguous row: the same draw always
            pieces.append(drawn)
            available += block
        noise = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
        self.pending = noise[:, n:]
        return noise[:, :n].transpose(0, 1).contiguous()

    def generators_on(self, device: torch.device) -> list[torch.Generator]:
        """The images' generators, made on ``device`` at the first draw."""
        if self.generators is None:
            self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in self.seeds]
        elif self.generators[0].device.type != torch.device(device).type:
            raise ValueError(f"this noise is drawn on {self.generators[0].device}, not on {device}")
        return self.generators

    def fork_seed(self, device: torch.device) -> int:
        """A seed for a draw that cannot take this noise (a posterior without a known reparameterization),
        from the batch's first image's generator: such draws depend on the batch of images."""
        generator = self.generators_on(device)[0]
        return int(torch.randint(2**62, (1,), generator=generator, device=generator.device))


def standard_normal(noise: torch.Generator | ImageNoise, n: int, like: torch.Tensor) -> torch.Tensor:
    """``[n, *like.shape]`` standard normal numbers from ``noise``: a generator (one draw for the whole
    batch) or an :class:`ImageNoise` (each image's own samples)."""
    if isinstance(noise, ImageNoise):
        return noise.standard_normal(n, like)
    return torch.randn((n, *like.shape), generator=noise, device=like.device, dtype=like.dtype)
