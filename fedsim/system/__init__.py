"""What every package leans on: errors, atomic files, processes, waits with deadlines, signals, memory."""
