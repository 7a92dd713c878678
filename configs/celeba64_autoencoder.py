"""Stage 1 of latent diffusion on CelebA 64x64 (TFDS ``celeb_a`` centre-cropped and resized,
prepared locally): LDM's KL-f4 autoencoder (Rombach et al. 2022, Table 8: f = 4, 3 latent
channels), 64x64x3 -> 16x16x3 latents."""

from configs import cifar10_autoencoder


def get_config():
    """CelebA 64x64, KL autoencoder f = 4 (CIFAR-10's autoencoder settings)."""
    config = cifar10_autoencoder.get_config()
    config.data.name = "celeb_a"
    config.data.shape = (64, 64, 3)
    config.data.image_size = 64
    config.data.num_classes = 0
    return config
