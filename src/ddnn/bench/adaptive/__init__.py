"""`ddnn bench adaptive`: the latency-budget controller (`ddnn device --latency-budget-ms`)
against the calibrated, fixed threshold on a stream whose link or server degrades mid-run.

Modules: `phases` (per-phase figures and the target's verdicts: pure), `disturb` (the slowed
link and the loaded server), `experiment` (one device's stream with the phases switched at
sample boundaries), `run` (the scenarios end to end, the report), `plot` (threshold and latency
over time).
"""
