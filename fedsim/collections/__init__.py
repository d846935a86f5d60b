"""Collections: one experiment repeated over seeds and configurations (`run_and_collect.py`), each run its
own process, gathered into tidy CSVs that survive a kill at any moment."""
