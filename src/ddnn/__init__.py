"""ddnn: deep learning across end devices, an edge gateway and a server.

One model is cut into tier sections with early exits; easy samples are answered on the
device and only hard ones travel upward.
"""

__version__ = "0.1.0"
