"""What crosses between the server and its clients, with both halves of each transform in one module: weights
in Flower's records, the precision updates travel in, one message for a node's share of the cohort, a message
for one partition of a pooled node, replies of the rows a client changed, and a handler's error as a reply."""
