"""The pure core: task and node states, core allocation, scheduling, and the cluster state machine.

Nothing here performs I/O, reads a clock, starts a thread, or imports anything beyond the
standard library's data structures. The host drives it with events and the current time, and
carries out the effects it returns.
"""
