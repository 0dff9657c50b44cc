"""The relay: SayPI's process for slow and external work, never done inside a request.

`run.py relay` runs it beside the servers; any number may run at once. See docs/relay.md.
"""
