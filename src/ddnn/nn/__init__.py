"""Building blocks: binarized layers, blocks built from layer specs, normalized entropy."""
