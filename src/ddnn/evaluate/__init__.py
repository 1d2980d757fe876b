"""Exit policy, accuracy and communication metrics, threshold sweeps and calibration."""
