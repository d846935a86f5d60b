"""A run's outputs, one callback per module, all fed by the same per-round record (fedsim.server.record).

Each callback declares its phase (fedsim.outputs.base.Phase) and fedsim.outputs.phases runs them phase
by phase: producers (which return per-round metrics or fill each update's statistics) before writers,
writers before reports, the checkpointer last.
"""
