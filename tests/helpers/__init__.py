"""What the tests share: the configs they run, the ways they run main.py and the loop, and how they find processes."""
