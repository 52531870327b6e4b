"""tpo_ray: Ray-distributed text preference optimisation for diffusion U-Nets."""
__version__ = "0.1.0"
