"""dnirecon: deep network interpolation for accelerated parallel MRI reconstruction.

The core layer: what training, the registry and the service share (fastMRI and ISMRMRD HDF5 reading,
mask functions, the centred FFT convention, foreground masks, metrics, the gRPC wire format and
stubs). It imports nothing else of the project, and numpy, scipy, scikit-image and h5py but never
torch, so the service and the scanner-side client stay small (tests/test_layers.py).
"""

__version__ = "0.1.0"
