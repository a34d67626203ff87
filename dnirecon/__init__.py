"""dnirecon: deep network interpolation for accelerated parallel MRI reconstruction.

This package holds what the training side and the service side share: fastMRI HDF5 reading, mask
functions, the centred FFT convention, foreground masks, metrics and the gRPC stubs. It imports numpy,
scipy, scikit-image and h5py, never torch, so the service and the scanner-side client stay small.
"""

__version__ = "0.1.0"
