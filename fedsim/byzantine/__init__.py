"""Byzantine-robust learning's maths on plain vectors: the omniscient attacks and the robust aggregation rules."""
