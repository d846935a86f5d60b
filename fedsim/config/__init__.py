"""The config: composed from conf/ once, validated in one place, upgraded in one step for runs saved by an
older fedsim; the command line checked before anything starts."""
