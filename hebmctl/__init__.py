"""hebmctl: energy-based priors on the latent space of hierarchical VAEs."""

__version__ = "0.1.0"
