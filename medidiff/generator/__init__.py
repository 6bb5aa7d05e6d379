"""Latent-diffusion generator for synthetic scans (``medidiff synthesize --model LDM_DIR``):
MONAI ``AutoencoderKL`` + ``DiffusionModelUNet`` on its latent (Pinaya et al. 2022), trained in
two resumable stages by ``pipelines/train_generator.py``."""
