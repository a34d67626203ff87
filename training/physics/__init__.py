"""Torch MRI physics: centred FFTs, SENSE operator, RSS, data consistency, ACS sensitivity maps."""
