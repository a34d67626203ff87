"""Networks: Down-Up, the sensitivity network (SN), the fastMRI-style U-Net, the PatchGAN discriminator."""
