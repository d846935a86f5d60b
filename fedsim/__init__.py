"""fedsim: a research harness for federated IMDB sentiment classification with Flower.

A package per concern (docs/reference/architecture.md has the map): config, data, model, client,
server, privacy, outputs, runtimes, collections, run, results, system.
"""

import warnings

from fedsim.config.resolvers import register

# Weights arrive as read-only views of Flower's messages (fedsim.messages.records); torch only reads them
# (load_state_dict, the archive's conversion), so its warning about non-writable arrays is noise.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
register()
