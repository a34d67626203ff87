"""The commands on top of the library: the `dnirecon` console script, the demo, the bench."""
