"""A run's outputs, one callback per module, all fed by the same per-round record (fedsim.server.record).

The callbacks never see each other; the one order they depend on is stated in fedsim.run.session's
`standard_outputs`.
"""
