"""Per-pixel spectral autoencoders (MLP or 1-D conv; AE or VAE): sampling, training
(PyTorch), inference (NumPy/CuPy).
"""
