"""Co-design on emulated hardware: profile a run on a device and link profile (`profile`),
predict its latency, bytes and accuracy at every threshold (`predict`), and choose among
candidate designs under budgets (`plan`)."""
