"""Training side of dnirecon: synthetic data, torch physics, SN / SN-GAN / U-Net, MLflow logging."""
